"""``python -m consul_simulator``: the ``consul-simulator`` command, for environments without it."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m consul_simulator"))
