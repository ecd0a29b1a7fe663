"""The thread-to-loop hand-off: every item once, in order; a stream costs one wake-up, not one per item."""

from __future__ import annotations

import asyncio
import threading

from edge_node.handoff import LoopHandoff


def test_items_from_threads_arrive_once_in_order() -> None:
    async def run() -> list[int]:
        got: list[int] = []
        done = asyncio.Event()
        loop = asyncio.get_running_loop()

        def deliver(i: int) -> None:
            got.append(i)
            if len(got) == 3000:
                done.set()

        handoff = LoopHandoff(loop, deliver, maxlen=10_000, linger=0.001)

        def produce() -> None:
            for i in range(3000):
                handoff.put(i)

        thread = threading.Thread(target=produce)
        thread.start()
        await asyncio.wait_for(done.wait(), 30)
        thread.join()
        return got

    assert asyncio.run(run()) == list(range(3000))


def test_a_stream_is_drained_on_a_timer_and_a_quiet_spell_wakes_the_loop_again() -> None:
    async def run() -> None:
        got: list[int] = []
        handoff = LoopHandoff(asyncio.get_running_loop(), got.append, linger=1.0)
        handoff.put(1)
        for _ in range(3):
            await asyncio.sleep(0)
        assert got == [1], "the first item after a quiet spell is delivered at once"
        handoff.put(2)  # within the linger: no wake-up, the timed drain takes it
        handoff.put(3)
        assert handoff.wakeups == 1
        await asyncio.sleep(0)
        assert got == [1]
        for _ in range(100):
            if len(got) == 3:
                break
            await asyncio.sleep(0.05)
        assert got == [1, 2, 3] and handoff.wakeups == 1
        for _ in range(100):  # the next timed drain finds nothing: the loop waits to be woken again
            if not handoff._scheduled:
                break
            await asyncio.sleep(0.05)
        handoff.put(4)
        for _ in range(3):
            await asyncio.sleep(0)
        assert got == [1, 2, 3, 4] and handoff.wakeups == 2

    asyncio.run(run())
