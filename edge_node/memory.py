"""Hand memory back to the OS after a model is dropped (glibc only; a no-op elsewhere).

ONNX Runtime and LiteRT allocate a model's weights and arenas with malloc from whichever thread builds the
session. glibc keeps freed blocks in per-thread arenas, so a node that builds and drops sessions (mode
switches, over-the-air swaps) grew by 30-90 MB without any leak. Three things keep it flat and low (measured
in docs/reliability.md): few arenas (``limit_arenas``, at start-up, before threads exist); a fixed mmap
threshold (``fix_mmap_threshold``): glibc otherwise raises it to the size of every large block freed, so after
the first dropped session the next sessions' multi-MB blocks land in the heap, where they fragment it instead
of going back to the OS when freed (a 2-worker node sat at 214 MB instead of 194 MB); and ``malloc_trim`` once
a dropped model's last reference is gone (``trim``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

__all__ = ["MMAP_THRESHOLD", "fix_mmap_threshold", "limit_arenas", "trim"]

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20  # camera frames (0.9 MB at 640x480) stay in the heap and are reused


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim, libc.mallopt  # noqa: B018 - glibc only: musl has neither
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(count: int) -> bool:
    """Cap glibc's malloc arenas (``M_ARENA_MAX``); call before worker threads start. False if unsupported."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(_M_ARENA_MAX, count) == 1)


def fix_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> bool:
    """Serve blocks of ``nbytes`` and more with their own mmap, always (glibc's adaptive threshold off).
    False if unsupported."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, nbytes) == 1)


def trim() -> bool:
    """Return free heap memory to the OS; True if glibc released something."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))
