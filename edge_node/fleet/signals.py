"""Signals handed to an asyncio loop without asyncio's self-pipe, so a busy loop cannot miss one.

``loop.add_signal_handler`` learns of a signal only from its number written into the loop's self-pipe by
Python's C-level handler. That pipe is a non-blocking socketpair that every ``call_soon_threadsafe`` also
writes a byte into (aiomqtt makes one for each socket it waits to write on), so with thousands of connections
on a busy loop it is often full, and then the signal's byte is dropped: the simulator missed SIGTERM under load.
A Python-level handler (``signal.signal``) always runs, in the main thread at its next bytecode, whatever the
pipe holds; it hands the action to the loop with ``call_soon_threadsafe``, whose own byte either lands or finds
the pipe already full, readable, and so the loop awake.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["loop_signals"]


@contextlib.contextmanager
def loop_signals(
    loop: asyncio.AbstractEventLoop, actions: Mapping[signal.Signals, Callable[[], None]]
) -> Iterator[None]:
    """Run ``actions[signum]`` on ``loop`` for each signal received while inside; the old handlers come back."""

    def handler(signum: int, frame: Any) -> None:
        loop.call_soon_threadsafe(actions[signal.Signals(signum)])

    previous = {signum: signal.signal(signum, handler) for signum in actions}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
