"""The thread-to-loop hand-off: every item once, in order; a stream costs one wake-up, not one per item."""

from __future__ import annotations

import asyncio
import threading

from edge_node.node.handoff import LoopHandoff


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


def test_a_fast_stream_is_drained_on_a_timer_and_a_quiet_spell_wakes_the_loop_again() -> None:
    async def run() -> None:
        got: list[int] = []
        handoff = LoopHandoff(asyncio.get_running_loop(), got.append, linger=1.0)

        async def spin() -> None:
            for _ in range(3):
                await asyncio.sleep(0)

        handoff.put(1)
        await spin()
        handoff.put(2)  # within the linger of the previous drain: a fast stream
        await spin()
        assert got == [1, 2] and handoff.wakeups == 2, "each is delivered at once, until the stream is seen as fast"
        handoff.put(3)  # from now on the timed drain takes them: no wake-up
        handoff.put(4)
        await spin()
        assert got == [1, 2] and handoff.wakeups == 2
        for _ in range(100):
            if len(got) == 4:
                break
            await asyncio.sleep(0.05)
        assert got == [1, 2, 3, 4] and handoff.wakeups == 2
        handoff.put(5)  # the stream goes on: the next timed drain takes it too
        for _ in range(100):
            if len(got) == 5:
                break
            await asyncio.sleep(0.05)
        assert got == [1, 2, 3, 4, 5] and handoff.wakeups == 2
        for _ in range(100):  # the next timed drain finds nothing: the loop waits to be woken again
            if not handoff._scheduled:
                break
            await asyncio.sleep(0.05)
        handoff.put(6)
        await spin()
        assert got == [1, 2, 3, 4, 5, 6] and handoff.wakeups == 3

    asyncio.run(run())


def test_a_slow_stream_wakes_the_loop_for_each_item_without_timed_drains() -> None:
    async def run() -> None:
        got: list[int] = []
        handoff = LoopHandoff(asyncio.get_running_loop(), got.append, linger=0.01)
        for i in range(5):
            handoff.put(i)
            for _ in range(3):
                await asyncio.sleep(0)
            assert got == list(range(i + 1)) and not handoff._scheduled
            await asyncio.sleep(0.02)  # slower than one per linger
        assert handoff.wakeups == 5

    asyncio.run(run())
