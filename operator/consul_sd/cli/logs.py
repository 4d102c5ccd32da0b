"""Logging of ``consul-sd``: text, logfmt or JSON lines on stderr, never a traceback by default.

Every record is one line. An exception attached to a record is shown as ``(Type: message)``;
its traceback only at ``--log-level debug``. Credentials the command read (:func:`redact`) are
replaced in every line this module writes, the error line of :func:`consul_sd.cli.main`
included, as a last guard behind the engine's own scrubbing.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_SECRETS: set[str] = set()
REDACTED = "[redacted]"


def redact(secret: str | None) -> None:
    """Never print ``secret`` (short values are left alone: they would mangle every line)."""
    if secret and len(secret.strip()) >= 4:
        _SECRETS.add(secret.strip())


def scrub(text: str) -> str:
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


class _OneLine(logging.Formatter):
    """A record as one line in ``style``; the traceback only when ``tracebacks``."""

    def __init__(self, *, style: str, tracebacks: bool) -> None:
        super().__init__()
        self._style_name = style
        self._tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None and not self._tracebacks:
            error = record.exc_info[1]
            message = f"{message} ({type(error).__name__}: {error})"
        message = scrub(message.replace("\n", " "))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        stamp += f".{int(record.msecs):03d}Z"
        level = record.levelname.lower()
        # The operator's log filter names the CR a line concerns (namespace/name) in record.cr.
        cr = getattr(record, "cr", None)
        if self._style_name == "json":
            fields = {"time": stamp, "level": level, "logger": record.name, "msg": message}
            line = json.dumps(fields | ({"cr": cr} if isinstance(cr, str) else {}))
        elif self._style_name == "logfmt":
            line = f"time={stamp} level={level} logger={record.name} msg={_quoted(message)}"
            if isinstance(cr, str):
                line += f" cr={_quoted(cr)}"
        else:
            line = f"{stamp} {record.levelname} {record.name}: {message}"
        if record.exc_info and self._tracebacks:
            line += "\n" + scrub(self.formatException(record.exc_info))
        return line


def _quoted(value: str) -> str:
    if value and not any(c in value for c in ' "=\\'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def configure(*, level: str, style: str) -> None:
    """Send every log record to stderr, one line each, in ``style`` (text, logfmt or json)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine(style=style, tracebacks=level == "debug"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
