"""glibc's allocator kept lean: two arenas, and freed memory handed back after each collection.

glibc gives each thread that allocates while another does an arena of its own (up to eight per
core) and keeps what is freed in each: with a hundred scrapers connected, the resident set grew
by 10-15 MB that no object used. Elsewhere (musl, macOS) these are no-ops.
"""

from __future__ import annotations

import ctypes
from typing import Any

_M_ARENA_MAX = -8


def _glibc() -> Any:
    try:
        library = ctypes.CDLL(None)
        library.mallopt  # noqa: B018 - present only in glibc
        library.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return library


_LIBC = _glibc()


def limit_arenas(count: int = 2) -> None:
    """Call before threads start."""
    if _LIBC is not None:
        _LIBC.mallopt(_M_ARENA_MAX, count)


def trim() -> None:
    """Return the free pages of every arena to the system."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
