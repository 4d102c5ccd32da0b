"""``consul-sd operator``: kopf's runner with the handlers of :mod:`consul_sd.controller.handlers`.

Imported by :func:`consul_sd.cli.main` only when this subcommand runs, because importing the
handlers loads kopf and the Kubernetes client (about a second). The flags are in
:mod:`consul_sd.cli.arguments`. Before kopf starts, :func:`kubernetes_credentials` checks that
there is something to log in with (in-cluster, else a kubeconfig): without it kopf would retry
forever, printing a traceback a minute, where one line says what is missing.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

from consul_sd.cli.arguments import CommandError
from consul_sd.controller import handlers

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def kubernetes_credentials(
    environ: Mapping[str, str], *, home: Path, token: Path = SERVICE_ACCOUNT_TOKEN
) -> str | None:
    """Where the Kubernetes credentials would come from, or None when there are none."""
    if environ.get("KUBERNETES_SERVICE_HOST") and token.is_file():
        return "in-cluster service account"
    configured = environ.get("KUBECONFIG", "")
    paths = [Path(p) for p in configured.split(os.pathsep) if p] or [home / ".kube" / "config"]
    for path in paths:
        if path.is_file():
            return f"kubeconfig {path}"
    return None


def run(args: argparse.Namespace) -> int:
    environ = os.environ
    if kubernetes_credentials(environ, home=Path.home()) is None:
        where = environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
        raise CommandError(
            f"no Kubernetes credentials: not in a cluster, and no kubeconfig at {where}; "
            "set KUBECONFIG or run inside a pod with a service account"
        )
    return handlers.run_operator(args)
