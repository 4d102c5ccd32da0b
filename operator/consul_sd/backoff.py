"""Exponential backoff with jitter, shared by the client's retries and the workers' loops.

Jitter spreads the retries of thousands of watches that failed together (a Consul restart), so
they do not return in one synchronised wave.
"""

from __future__ import annotations

import random


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Delay before retry number ``attempt`` (0-based): half fixed, half random, capped."""
    ceiling = min(cap, base * 2.0 ** min(attempt, 30))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)
