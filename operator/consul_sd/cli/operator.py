"""``consul-sd operator``: kopf's runner with the handlers of :mod:`consul_sd.controller.handlers`.

Imported by :func:`consul_sd.cli.main` only when this subcommand runs, because importing the
handlers loads kopf and the Kubernetes client (about a second). The flags are in
:mod:`consul_sd.cli.arguments`.
"""

from __future__ import annotations

import argparse

from consul_sd.controller import handlers


def run(args: argparse.Namespace) -> int:
    return handlers.run_operator(args)
