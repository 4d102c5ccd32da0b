"""Give freed heap back to the operating system after a burst of allocations.

A cold discovery decodes tens of thousands of small JSON objects; CPython frees them, but glibc
keeps the pages, so the process's RSS stays at its peak (measured: 297 MiB held, 225 MiB after a
trim, at 7000 services). A trim after each polling cycle that fetched (and each Blocking
publication) keeps a long-running worker's RSS near its live data. Where glibc's
``malloc_trim`` does not exist (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


def _find_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_TRIM = _find_trim()


def release_free_memory() -> None:
    """Return free heap pages to the OS, if the C library can."""
    if _TRIM is not None:
        _TRIM(0)
