"""The node's watch rules: each result goes through the tracker (``edge_node.watch``) on the loop, and what it
says goes out on ``detections/`` (QoS 1, queued through broker outages like events). The open detections are
kept on disk, so a node killed mid-detection ends it when it starts again (docs/detections.md). The file is
written (with an fsync, slow on an SD card) by one task through a worker thread, never on the loop itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from edge_node.capture.base import Frame
from edge_node.config import SnapshotConfig
from edge_node.errors import SnapshotError
from edge_node.node.jpeg import caption_for, encode_snapshot
from edge_node.node.outbox import Outbox
from edge_node.vision.pipeline import Result
from edge_node.watch import Journal, Tracker, detection_id, ended_by_restart
from edge_node.watch.tracker import SNAPSHOT_WINDOW_S
from edge_node.wire import Detection, Event, WatchRule, WatchState

__all__ = ["TICK_S", "Watcher"]

log = logging.getLogger(__name__)

JOURNAL_EVERY = 10  # ticks between refreshes of the open detections on disk (5 s)
TICK_S = 0.5  # how often a detection whose frames stopped coming is looked at (its gap may have passed)


class Watcher:
    """Owns the tracker and the journal of open detections; runs on the loop only."""

    def __init__(
        self,
        node_id: str,
        rules: Sequence[WatchRule],
        outbox: Outbox,
        journal: Journal,
        *,
        labels: Sequence[str],
        snapshots: SnapshotConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._snap = snapshots if snapshots is not None and snapshots.enabled else None
        self.tracker = Tracker(node_id, rules, labels=labels, snapshots=self._snap is not None)
        self._outbox = outbox
        self._journal = journal
        self._clock = clock
        # (rule, run's first frame time) → the best frame of the run's first second so far, its label and score
        self._candidates: dict[tuple[str, float], tuple[Frame, str, float]] = {}
        self._detections: set[tuple[str, float]] = set()  # of those, the runs that became detections
        self._encoding: set[asyncio.Task[None]] = set()
        # the journal: the newest open list waits here for journal_writer(), its one writer
        self._pending: list[Detection] = []
        self._dirty = asyncio.Event()
        self._written = asyncio.Event()
        self._written.set()

    def recover(self) -> None:
        """At start-up: end what a previous run left open (and say so), and name the rules paused from the start."""
        for rec in self._journal.load():
            end = ended_by_restart(rec, self._clock())
            log.warning("detection %s of rule %s was left open by the previous run: ending it", rec.id, rec.rule)
            self._outbox.detection(end)
            self._outbox.event(
                Event(
                    cmd="detection_recovered",
                    ok=False,
                    error=f"the node stopped without ending detection {rec.id} of rule {rec.rule!r} "
                    "(killed or lost power); it is ended now with its last recorded figures",
                    detail={"rule": rec.rule, "id": rec.id},
                )
            )
        self._persist()
        for name, why in self.tracker.paused.items():
            self._paused(name, why)

    def on_result(self, r: Result) -> None:
        tracker = self.tracker
        said = tracker.frame(r.ts, r.classification.top_k)
        if tracker.firsts:
            if r.frame is not None:
                for rule, started, score, label in tracker.firsts:
                    self._candidates[(rule, started)] = (r.frame, label, score)
            tracker.firsts.clear()
        if said:
            if self._snap is not None:
                self._mark_snapshots(said)
            self._say(said)
        if self._candidates:
            self._settle(r.ts)

    # --- snapshots (EDGE_SNAPSHOT__ENABLED): the best frame of a detection's first second ----------------------

    def _mark_snapshots(self, said: Sequence[Detection]) -> None:
        for d in said:
            run = self.tracker.current(d.rule) if d.event == "start" else None
            if run is not None and (d.rule, run[0]) in self._candidates:
                self._detections.add((d.rule, run[0]))
                d.snapshot = True

    def _settle(self, now: float) -> None:
        """Send the snapshot of each detection whose first second is over (or that ended within it); forget the
        frames of runs that never became detections."""
        for key in list(self._candidates):
            rule, started = key
            run = self.tracker.current(rule)
            if run is not None and run[0] == started and (not run[1] or now - started <= SNAPSHOT_WINDOW_S):
                continue  # still pending, or still in its first second
            frame, label, score = self._candidates.pop(key)
            if key in self._detections:
                self._detections.discard(key)
                task = asyncio.get_running_loop().create_task(
                    self._send(detection_id(rule, started), frame, label, score)
                )
                self._encoding.add(task)
                task.add_done_callback(self._encoding.discard)

    async def flush(self) -> None:
        """Wait until the snapshots being encoded are handed to the outbox."""
        while self._encoding:
            await asyncio.gather(*self._encoding)

    async def _send(self, ident: str, frame: Frame, label: str, score: float) -> None:
        cfg = self._snap
        assert cfg is not None
        try:
            jpeg = await asyncio.to_thread(
                encode_snapshot, frame, caption_for(label, score), max_bytes=cfg.max_bytes, max_width=cfg.max_width
            )
        except SnapshotError as exc:
            log.warning("no snapshot for detection %s: %s", ident, exc)
            return
        self._outbox.detection_snapshot(ident, jpeg.data)

    def labels(self, labels: Sequence[str]) -> None:
        """What serves may have changed (a model swap, a mode step): pause or resume rules by the new labels."""
        ends, changed = self.tracker.set_labels(labels, now=self._clock())
        self._say(ends)
        for name, why in changed.items():
            if why is None:
                log.info("watch rule %s resumed: the serving model has its classes again", name)
                self._outbox.event(Event(cmd="watch_resumed", ok=True, detail={"rule": name}))
            else:
                self._paused(name, why)

    def set_rules(self, rules: Sequence[WatchRule]) -> dict[str, object]:
        """``set_watch``: replace the rules; returns the event's detail."""
        self._say(self.tracker.set_rules(rules, now=self._clock()))
        paused = self.tracker.paused
        for name, why in paused.items():
            self._paused(name, why)
        return {"rules": [r.name for r in rules], "paused": sorted(paused)}

    async def ticks(self, interval: float = TICK_S) -> None:
        """End detections whose frames stopped coming once their gap has passed."""
        beats = 0
        while True:
            await asyncio.sleep(interval)
            self._say(self.tracker.tick(self._clock()))
            beats += 1
            if beats % JOURNAL_EVERY == 0 and self.tracker.open():  # an open detection's figures stay this fresh
                self._persist()

    async def journal_writer(self) -> None:
        """The journal's one writer: the newest open list, one write at a time, in a worker thread."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await asyncio.to_thread(self._journal.save, self._pending)
            if not self._dirty.is_set():
                self._written.set()

    async def journal_drained(self, grace: float) -> bool:
        """At shutdown, before the writer task is stopped: wait until the newest open list is on disk."""
        try:
            async with asyncio.timeout(grace):
                await self._written.wait()
        except TimeoutError:
            log.warning("the open detections were not written within %.0f s", grace)
            return False
        return True

    def _persist(self) -> None:
        self._pending = self.tracker.open()
        self._written.clear()
        self._dirty.set()

    def shutdown(self) -> None:
        """The node stops: end what is open (reason ``shutdown``), so no consumer waits for it."""
        self._say(self.tracker.close(self._clock(), "shutdown"))

    def state(self) -> WatchState:
        return WatchState(rules=list(self.tracker.rules), paused=self.tracker.paused)

    def counts(self) -> dict[str, int]:
        return self.tracker.counts

    def _paused(self, name: str, why: str) -> None:
        log.warning("watch rule %s paused: %s", name, why)
        self._outbox.event(
            Event(
                cmd="watch_paused",
                ok=False,
                error=f"rule {name!r} is paused: {why}; it resumes when a model with them serves, "
                "or change its classes with set_watch",
                detail={"rule": name},
            )
        )

    def _say(self, said: Sequence[Detection]) -> None:
        if not said:
            return
        for d in said:
            log.info("detection %s %s (rule %s, %d frames)", d.event, d.id, d.rule, d.frames)
            self._outbox.detection(d)
        self._persist()
