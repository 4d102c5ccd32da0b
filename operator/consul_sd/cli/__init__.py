"""The ``consul-sd`` command: parse the command line, then load only the chosen subcommand.

``consul-sd --version`` and ``--help`` answer from argparse alone: the top-level parser and every
subcommand's flags live in :mod:`consul_sd.cli.arguments`, which imports nothing else. The work
of a subcommand is in its own module (:mod:`consul_sd.cli.discover`,
:mod:`consul_sd.cli.operator`, :mod:`consul_sd.cli.validate`), imported by :func:`main` only once
that subcommand was chosen: the engine (pydantic, aiohttp, yaml) loads for ``discover``, kopf and
the Kubernetes client only for ``operator``. ``tests/unit/test_cli_imports.py`` checks both.

Every failure is one line on stderr, ``consul-sd: error: ...``: exit 2 for usage (followed by one
line of usage), 1 for the rest, an unexpected error included; its traceback is logged only at
``--log-level debug``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from consul_sd.cli import logs
from consul_sd.cli.arguments import CommandError, UsageError, build_parser, usage_line

__all__ = ["CommandError", "UsageError", "build_parser", "main"]

logger = logging.getLogger("consul_sd")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(level=args.log_level, style=args.log_format)
    try:
        return _run(args)
    except UsageError as exc:
        _error(str(exc))
        print(usage_line(f"consul-sd {args.command}"), file=sys.stderr)
        return 2
    except CommandError as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        logger.debug("unexpected error", exc_info=exc)
        leaf = _first_leaf(exc)
        hint = "" if args.log_level == "debug" else " (--log-level debug shows where)"
        _error(f"unexpected {type(leaf).__name__}: {leaf}{hint}")
        return 1


def _error(message: str) -> None:
    print(logs.scrub(f"consul-sd: error: {message}".replace("\n", " ")), file=sys.stderr)


def _first_leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups, which say only "sub-exception"."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _run(args: argparse.Namespace) -> int:
    """Run the chosen subcommand, importing its module (and what it needs) only now."""
    # The one place with function-level imports: each subcommand's dependencies cost 0.3-2 s
    # of start-up, which --version, --help and the other subcommands must not pay.
    if args.command == "discover":
        from consul_sd.cli import discover  # noqa: PLC0415 - the engine loads only for discover

        return discover.run(args)
    if args.command == "operator":
        from consul_sd.cli import operator  # noqa: PLC0415 - kopf loads only for this command

        return operator.run(args)
    if args.command == "validate":
        from consul_sd.cli import validate  # noqa: PLC0415 - pydantic loads only when it runs

        return validate.run(args)
    if args.command == "convert":
        from consul_sd.cli import convert  # noqa: PLC0415 - yaml loads only when it runs

        return convert.run(args)
    raise AssertionError(f"no module for {args.command!r}")  # argparse offers only the above
