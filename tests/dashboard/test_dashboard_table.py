"""The fleet table without I/O: search, paging, problems only, compact rows from heartbeat and state."""

from __future__ import annotations

from edge_node.config import DashboardConfig
from edge_node.dashboard.board import SWEEP_EVERY_UPDATE_UP_TO, Board
from edge_node.dashboard.inbox import Inbox
from edge_node.dashboard.table import MAX_PAGE_SIZE, FleetTable
from edge_node.fleet.simnode import SimNode

CFG = DashboardConfig(stale_after=10)


def _fleet(count: int, offline: frozenset[int] = frozenset()) -> Board:
    board = Board("gp", CFG)
    latest = []
    for i in range(count):
        sim = SimNode(f"n{i:04d}")
        status = b"offline" if i in offline else b"online"
        latest += [(f"gp/n{i:04d}/status", status, 100.0), (f"gp/n{i:04d}/state", sim.state(), 100.0)]
        latest.append((f"gp/n{i:04d}/heartbeat", sim.heartbeat(server="127.0.0.1:1", failovers=i % 3), 100.0))
    board.update(latest, [], 100.0, 1000.0)
    return board


def test_pages_are_in_id_order_and_a_page_past_the_end_is_the_last() -> None:
    table = FleetTable(_fleet(250))
    first = table.page(page=0, size=100, wall=1000.0, now=101.0)
    assert (first["matching"], first["pages"], first["page"]) == (250, 3, 0)
    assert [r["node"] for r in first["rows"]][:3] == ["n0000", "n0001", "n0002"] and len(first["rows"]) == 100
    last = table.page(page=99, size=100, wall=1000.0, now=101.0)
    assert last["page"] == 2 and [r["node"] for r in last["rows"]] == [f"n{i:04d}" for i in range(200, 250)]
    assert table.page(size=10_000, wall=1000.0, now=101.0)["size"] == MAX_PAGE_SIZE


def test_search_is_a_substring_of_the_id_in_any_case_and_problems_filter_the_status() -> None:
    table = FleetTable(_fleet(300, offline=frozenset({7, 107, 250})))
    found = table.page("N01", size=500, wall=1000.0, now=101.0)
    assert found["matching"] == 100 and all("n01" in r["node"] for r in found["rows"])
    problems = table.page(problems=True, wall=1000.0, now=101.0)
    assert [r["node"] for r in problems["rows"]] == ["n0007", "n0107", "n0250"]
    assert {r["status"] for r in problems["rows"]} == {"offline"}
    both = table.page("n01", problems=True, wall=1000.0, now=101.0)
    assert [r["node"] for r in both["rows"]] == ["n0107"]
    none = table.page("zz", wall=1000.0, now=101.0)
    assert (none["matching"], none["pages"], none["rows"]) == (0, 1, [])


def test_a_row_is_the_newest_heartbeat_and_state_and_new_nodes_join_the_order() -> None:
    board = _fleet(3)
    table = FleetTable(board)
    row = table.page(wall=1000.0, now=104.0)["rows"][2]
    assert row["node"] == "n0002" and row["status"] == "online" and row["mode"] == "high"
    assert row["server"] == "127.0.0.1:1" and row["failovers"] == 2 and row["heard_s"] == 4.0
    assert isinstance(row["fps"], float) and row["model"]
    board.update([("gp/a-first/status", b"online", 105.0)], [], 105.0, 1005.0)
    assert table.page(wall=1005.0, now=105.0)["rows"][0]["node"] == "a-first"
    assert table.page(wall=1005.0, now=105.0)["summary"]["total"] == 4


def test_a_large_fleets_update_looks_at_the_changed_nodes_and_sweeps_all_once_a_second() -> None:
    """Beyond SWEEP_EVERY_UPDATE_UP_TO nodes an update costs what arrived: staleness and the summary of the whole
    fleet are redone once a second, a node whose message arrived is looked at in its own update."""
    count = SWEEP_EVERY_UPDATE_UP_TO + 1
    inbox = Inbox("gp", max_nodes=count, backlog=10)
    for i in range(count):
        inbox.ingest(f"gp/n{i:04d}/status", b"online", 100.0)
    board = Board("gp", CFG)
    first = board.update(inbox.take_changed(), [], 100.0, 1000.0)
    assert first["summary"]["online"] == count and inbox.take_changed() == []  # taken once
    inbox.ingest("gp/n0001/status", b"offline", 105.0)
    [(topic, raw, _at)] = inbox.take_changed()
    assert (topic, raw) == ("gp/n0001/status", b"offline")
    changed = board.update([(topic, raw, 105.0)], [], 100.5, 1000.5)  # within the second: no sweep
    assert changed["nodes"] == [{"node": "n0001", "status": "offline"}] and "summary" not in changed
    quiet = board.update([], [], 111.0, 1011.0)  # a sweep: every node silent for 11 s > stale_after 10
    assert len(quiet["nodes"]) == count - 1 and quiet["summary"]["stale"] == count - 1
    assert quiet["summary"]["offline"] == 1
    assert board.update([], [], 111.5, 1011.5)["nodes"] == []  # nothing arrived, no sweep due
