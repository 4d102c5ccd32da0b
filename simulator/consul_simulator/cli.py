"""``consul-simulator``: run the Consul simulator as a stand-alone server until signalled.

``main`` is the console script (and ``python -m consul_simulator``); ``add_arguments`` and ``run``
let a harness embed the same flags. Only the knobs a benchmark needs at start-up are flags;
everything else (other faults, check flips, counters) is reachable at run time through the
``/_sim/*`` endpoints. It listens until SIGTERM or SIGINT, then exits 0 (1 if it cannot listen).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from .duration import parse_go_duration
from .model import Faults
from .server import ConsulSimulator

__all__ = ["add_arguments", "main", "run"]


def _duration(text: str) -> float:
    # Plain numbers are seconds; anything else must be a Go duration ("250ms", "1m").
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return parse_go_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}") from None


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8500, help="listen port (default 8500)")
    parser.add_argument("--datacenter", default="dc1", help="datacenter name (default dc1)")
    parser.add_argument("--services", type=int, default=0, help="services to generate")
    parser.add_argument("--instances", type=int, default=1, help="instances per service")
    parser.add_argument("--nodes", type=int, default=1, help="nodes to spread instances over")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated fleet")
    parser.add_argument(
        "--max-conns-per-client",
        type=int,
        default=None,
        help="Consul's limits.http_max_conns_per_client (default: unlimited)",
    )
    parser.add_argument(
        "--latency", type=_duration, default=0.0, help="delay before every answer (s or 250ms)"
    )
    parser.add_argument(
        "--error-rate", type=_fraction, default=0.0, help="fraction of requests answered 500"
    )
    parser.add_argument(
        "--acl-token", default=None, help="enable default-deny ACLs with this token"
    )
    parser.add_argument(
        "--no-jitter",
        action="store_true",
        help="blocking queries time out after exactly `wait` (no wait/16 jitter)",
    )


async def run(args: argparse.Namespace) -> int:
    sim = ConsulSimulator(
        datacenter=args.datacenter,
        jitter=not args.no_jitter,
        acl_token=args.acl_token,
        faults=Faults(
            latency=args.latency,
            error_rate=args.error_rate,
            max_conns_per_client=args.max_conns_per_client,
        ),
    )
    if args.services:
        sim.generate(
            services=args.services, instances=args.instances, nodes=args.nodes, seed=args.seed
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await sim.start(host=args.host, port=args.port)
        except OSError as exc:
            print(
                f"consul simulator: cannot listen on {args.host}:{args.port}: {exc}",
                file=sys.stderr,
            )
            return 1
        print(
            f"consul simulator listening on {sim.address} "
            f"({args.services} services, {args.instances} instances)",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)
        await sim.stop()
    return 0


def main(argv: Sequence[str] | None = None, *, prog: str = "consul-simulator") -> int:
    """The ``consul-simulator`` command: parse ``argv`` (default: sys.argv), serve; exit code."""
    parser = argparse.ArgumentParser(prog=prog, description="Run a simulated Consul HTTP API.")
    add_arguments(parser)
    return asyncio.run(run(parser.parse_args(argv)))
