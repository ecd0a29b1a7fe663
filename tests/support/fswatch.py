"""What a block of code writes below a folder, seen through Python's audit hooks (PEP 578).

The events ``open`` (a write mode, or write/create flags for ``os.open``), ``os.mkdir`` and ``os.rename`` fire
in every thread for all of Python's file I/O, so a test can check that nothing was written before a check
without mocking anything. (Writes from native code outside Python, e.g. a runtime's own file I/O, are not seen;
the bundle code writes through Python.) A hook cannot be removed once added, so one is added for the whole run
and does nothing while no watch is open.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["watch_writes"]

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_lock = threading.Lock()
_watches: list[tuple[Path, list[str]]] = []


def _path(value: object) -> Path | None:
    if isinstance(value, str | bytes | os.PathLike):
        return Path(os.fsdecode(value)).absolute()
    return None  # a file descriptor


def _hook(event: str, args: tuple[object, ...]) -> None:
    if not _watches or event not in ("open", "os.mkdir", "os.rename"):
        return
    if event == "open":
        _, mode, flags = args
        if isinstance(mode, str):
            writing = any(c in mode for c in "wax+")
        else:
            writing = isinstance(flags, int) and bool(flags & _WRITE_FLAGS)
        if not writing:
            return
        targets = [args[0]]
    else:
        targets = list(args[:2]) if event == "os.rename" else [args[0]]
    for target in targets:
        path = _path(target)
        if path is None:
            continue
        with _lock:
            for root, seen in _watches:
                if path == root or root in path.parents:
                    seen.append(f"{event} {path.relative_to(root)}")


sys.addaudithook(_hook)


@contextmanager
def watch_writes(root: Path) -> Iterator[list[str]]:
    """Yield a list that collects ``"<event> <path relative to root>"`` for every write below ``root``."""
    seen: list[str] = []
    entry = (root.absolute(), seen)
    with _lock:
        _watches.append(entry)
    try:
        yield seen
    finally:
        with _lock:
            _watches.remove(entry)
