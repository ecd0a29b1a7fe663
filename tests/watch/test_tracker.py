"""The watch rules' state machine, the group table, the journal and the rules file (pure or on real files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_node.config import WatchConfig
from edge_node.errors import CommandError, ConfigError
from edge_node.modelzoo.labels import imagenet_labels
from edge_node.vision.model import Score
from edge_node.watch import GROUPS, Journal, Tracker, ended_by_restart, expand, load_rules
from edge_node.wire import Detection, SetWatch, WatchRule, parse_command

LABELS = imagenet_labels()
CAT = (Score(285, "Egyptian cat", 0.5), Score(281, "tabby", 0.3), Score(287, "lynx", 0.1))
WEAK_CAT = (Score(281, "tabby", 0.2), Score(967, "espresso", 0.1))
COFFEE = (Score(967, "espresso", 0.8), Score(968, "cup", 0.1))


def rule(**kw: object) -> WatchRule:
    base: dict[str, object] = {"name": "cat", "classes": ["cat"], "min_confidence": 0.3, "min_frames": 3}
    return WatchRule.model_validate(base | kw)


def feed(t: Tracker, frames: list[tuple[float, tuple[Score, ...]]]) -> list[Detection]:
    return [d for ts, top in frames for d in t.frame(ts, top)]


def seq(start: float, n: int, top: tuple[Score, ...], step: float = 0.1) -> list[tuple[float, tuple[Score, ...]]]:
    return [(round(start + i * step, 3), top) for i in range(n)]


def test_the_group_table_matches_imagenet() -> None:
    for name, entries in GROUPS.items():
        for index, label in entries:
            assert LABELS[index] == label, (name, index)
    assert expand(["cat"], LABELS) == {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
    # A custom bundle's own label wins over a group of the same name; unknown classes stay as they are.
    assert expand(["cat", "sparrow"], ["cat", "dog"]) == {"cat", "sparrow"}


def test_min_frames_start_and_a_gap_end_with_figures() -> None:
    t = Tracker("n", [rule()], labels=LABELS)
    said = feed(t, seq(0.0, 2, CAT))
    assert said == []  # two frames are not three
    said = feed(t, seq(0.2, 8, CAT) + seq(1.0, 5, COFFEE) + seq(1.5, 10, COFFEE))
    start, end = said
    assert (start.event, start.frames, start.started, start.ts) == ("start", 3, 0.0, 0.2)
    assert start.label == "Egyptian cat" and start.peak_confidence == pytest.approx(0.8)
    assert (end.event, end.id, end.reason) == ("end", start.id, "gap")
    assert end.frames == 10 and end.started == 0.0 and end.ended == 0.9 and end.duration_s == 0.9
    assert end.ts == pytest.approx(1.9)  # the first frame a whole gap (1 s) after the last cat
    assert end.mean_confidence == pytest.approx(0.8) and end.best_ts == 0.0
    assert t.counts == {"cat": 1}


def test_summed_confidence_misses_and_short_gaps() -> None:
    t = Tracker("n", [rule()], labels=LABELS)
    # 0.2 alone is below 0.3: a miss breaks the pending run, so three hits must be consecutive.
    said = feed(t, [*seq(0.0, 2, CAT), (0.2, WEAK_CAT), *seq(0.3, 2, CAT)])
    assert said == []
    said = feed(t, [(0.5, CAT)])
    assert [d.event for d in said] == ["start"] and said[0].started == 0.3
    # Inside a detection, misses shorter than the gap neither end it nor start another.
    said = feed(t, seq(0.6, 5, COFFEE) + seq(1.1, 3, CAT) + seq(1.4, 20, COFFEE))
    assert [d.event for d in said] == ["end"] and said[0].frames == 6 and said[0].ended == 1.3


def test_min_seconds_cooldown_and_tick() -> None:
    t = Tracker("n", [rule(min_frames=None, min_seconds=0.5, cooldown_s=5.0, gap_s=0.5)], labels=LABELS)
    said = feed(t, seq(0.0, 5, CAT))
    assert said == []  # 0.4 s of cat
    (start,) = feed(t, [(0.5, CAT)])
    assert start.frames == 6
    assert t.tick(0.9) == []  # the gap has not passed
    (end,) = t.tick(1.0)
    assert end.reason == "gap" and end.ended == 0.5
    assert feed(t, seq(2.0, 20, CAT)) == []  # in the cooldown (until 5.5)
    (again,) = feed(t, seq(5.5, 6, CAT))
    assert again.started == 5.5


def test_model_swaps_pause_without_a_watched_class_and_keep_a_detection_otherwise() -> None:
    t = Tracker("n", [rule(), rule(name="dog", classes=["dog"])], labels=LABELS)
    (start,) = feed(t, seq(0.0, 3, CAT))
    # Another ImageNet model: same labels, so nothing ends or starts again.
    assert t.set_labels(list(LABELS), now=0.35) == ([], {})
    assert feed(t, seq(0.3, 3, CAT)) == []
    # A bundle without cats: the rule pauses and its open detection ends, saying why.
    ends, changed = t.set_labels(["dog", "Egyptian cat"][:1], now=0.6)
    assert [(d.id, d.reason) for d in ends] == [(start.id, "paused")]
    assert set(changed) == {"cat"} and "cat" in t.paused
    # A custom bundle's own label "dog" is watched as it is.
    assert feed(t, seq(1.0, 3, (Score(0, "dog", 0.9),)))[0].rule == "dog"
    _, changed = t.set_labels(LABELS, now=2.0)
    assert changed == {"cat": None} and t.paused == {}


def test_set_rules_keeps_unchanged_rules_and_ends_the_others() -> None:
    t = Tracker("n", [rule(), rule(name="cat2")], labels=LABELS)
    starts = feed(t, seq(0.0, 3, CAT))
    assert sorted(d.rule for d in starts) == ["cat", "cat2"]
    ends = t.set_rules([rule(), rule(name="cat2", min_confidence=0.9)], now=1.0)
    assert [(d.rule, d.reason) for d in ends] == [("cat2", "rules")]
    assert [d.rule for d in feed(t, seq(0.3, 3, CAT))] == []  # "cat" goes on; "cat2" now needs 0.9
    (shut,) = t.close(2.0)
    assert (shut.rule, shut.reason, shut.frames) == ("cat", "shutdown", 6)


def test_rules_are_validated_strictly() -> None:
    assert rule(min_frames=None).min_frames == 1  # neither: one frame starts it
    bads: list[dict[str, object]] = [
        {"min_confidence": 1.5},
        {"min_confidence": "0.3"},
        {"name": "a b"},
        {"classes": []},
        {"x": 1},
    ]
    for bad in bads:
        with pytest.raises(ValueError, match="validation error"):
            rule(**bad)
    cmd = parse_command(json.dumps({"cmd": "set_watch", "rules": [rule().model_dump()]}).encode())
    assert isinstance(cmd, SetWatch) and cmd.rules == [rule()]
    with pytest.raises(CommandError, match="unique"):
        parse_command(json.dumps({"cmd": "set_watch", "rules": [rule().model_dump()] * 2}).encode())


def test_journal_round_trip_and_the_restart_end(tmp_path: Path) -> None:
    t = Tracker("n", [rule()], labels=LABELS)
    feed(t, seq(0.0, 7, CAT))
    journal = Journal(tmp_path / "state" / "watch-open.json")
    journal.save(t.open())
    (rec,) = Journal(journal.path).load()
    assert rec.frames == 7 and rec.ts == 0.6
    end = ended_by_restart(rec, now=100.0)
    assert (end.event, end.id, end.reason, end.ended, end.duration_s, end.ts) == (
        "end",
        rec.id,
        "restart",
        0.6,
        0.6,
        100,
    )
    journal.path.write_text("not json")
    assert Journal(journal.path).load() == []


def test_rules_file_adds_to_the_settings(tmp_path: Path) -> None:
    path = tmp_path / "watch.json"
    path.write_text(json.dumps([{"name": "bird", "classes": ["bird"]}]))
    rules = load_rules(WatchConfig(rules=[rule()], rules_file=path))
    assert [r.name for r in rules] == ["cat", "bird"]
    path.write_text(json.dumps([{"name": "cat", "classes": ["bird"]}]))
    with pytest.raises(ConfigError, match="unique"):
        load_rules(WatchConfig(rules=[rule()], rules_file=path))
    path.write_text("[{")
    with pytest.raises(ConfigError, match="JSON list of rules"):
        load_rules(WatchConfig(rules_file=path))
    with pytest.raises(ConfigError, match="cannot read"):
        load_rules(WatchConfig(rules_file=tmp_path / "missing.json"))
