"""The log lines of ``consul-sd``: one line each, in text, logfmt or JSON, never a credential."""

from __future__ import annotations

import json
import logging

import pytest

from consul_sd.cli import logs


@pytest.fixture(autouse=True)
def restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_credential_the_command_read_is_redacted_from_every_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure(level="info", style="text")
    logs.redact("tok-0123456789\n")
    logging.getLogger("consul_sd").warning("upstream said: bad token tok-0123456789")
    err = capsys.readouterr().err
    assert "tok-0123456789" not in err
    assert "bad token [redacted]" in err


def test_an_exception_is_a_suffix_and_its_traceback_only_at_debug(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logger = logging.getLogger("consul_sd")
    logs.configure(level="info", style="text")
    try:
        raise OSError("disk full")
    except OSError:
        logger.exception("cannot write")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("ERROR consul_sd: cannot write (OSError: disk full)")
    logs.configure(level="debug", style="text")
    try:
        raise OSError("disk full")
    except OSError:
        logger.exception("cannot write")
    assert "Traceback" in capsys.readouterr().err


def test_logfmt_and_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("consul_sd")
    logs.configure(level="info", style="logfmt")
    logger.info('wrote "x" = 3\nlines')
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(r'level=info logger=consul_sd msg="wrote \"x\" = 3 lines"')
    logs.configure(level="info", style="json")
    logger.info("plain")
    record = json.loads(capsys.readouterr().err)
    assert (record["level"], record["logger"], record["msg"]) == ("info", "consul_sd", "plain")


def test_a_line_about_a_cr_carries_it_as_a_field(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("consul_sd")
    logs.configure(level="info", style="json")
    logger.info("synced", extra={"cr": "team-a/web"})
    assert json.loads(capsys.readouterr().err)["cr"] == "team-a/web"
    logs.configure(level="info", style="logfmt")
    logger.info("synced", extra={"cr": "team-a/web"})
    assert capsys.readouterr().err.rstrip().endswith("cr=team-a/web")
