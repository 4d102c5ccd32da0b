"""The ``consul-sd`` command: parse the command line, then load only the chosen subcommand.

``consul-sd --version`` and ``--help`` answer from argparse alone: the top-level parser and every
subcommand's flags live in :mod:`consul_sd.cli.arguments`, which imports nothing else. The work
of a subcommand is in its own module (:mod:`consul_sd.cli.discover`,
:mod:`consul_sd.cli.operator`), imported by :func:`main` only once that subcommand was chosen:
the engine (pydantic, aiohttp, yaml) loads for ``discover``, kopf and the Kubernetes client only
for ``operator``. ``tests/unit/test_cli_imports.py`` checks both.

Errors the user caused are one line on stderr, ``consul-sd: error: ...``, exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from consul_sd.cli.arguments import UsageError, build_parser

__all__ = ["UsageError", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return _run(args)
    except UsageError as exc:
        print(f"consul-sd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


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
    raise AssertionError(f"no module for {args.command!r}")  # argparse offers only the above
