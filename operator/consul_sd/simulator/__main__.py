"""``python -m consul_sd.simulator``: the ``consul-sd simulate`` command without the main CLI."""

from __future__ import annotations

import argparse
import asyncio
import sys

from .cli import add_arguments, run


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m consul_sd.simulator", description="Run a simulated Consul HTTP API."
    )
    add_arguments(parser)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
