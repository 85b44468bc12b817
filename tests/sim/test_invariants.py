"""The invariant monitor on hand-made observations."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ringfs.node.raft.core import LEADER, Entry, EntryKind, SnapshotMeta
from tests.sim.invariants import Monitor


@dataclasses.dataclass
class FakeRaft:
    """The few properties of a Raft core the monitor reads."""

    role: str = "follower"
    term: int = 1
    commit_index: int = 0
    snapshot: SnapshotMeta | None = None


def cmd(term: int, index: int, op_id: int) -> Entry:
    return Entry(term, index, EntryKind.COMMAND, json.dumps({"id": op_id}).encode())


def log_of(*entries: Entry) -> dict[int, Entry]:
    return {e.index: e for e in entries}


def save(m: Monitor, node: str, raft: Any, log: dict[int, Entry], *new: Entry) -> None:
    m.after_save(node, raft, None, log, tuple(new))


def monitor() -> Monitor:
    return Monitor(lambda: 0.0)


def test_a_clean_history_has_no_violations() -> None:
    m = monitor()
    a, b = cmd(1, 1, 0), cmd(1, 2, 1)
    save(m, "n0", FakeRaft(LEADER, 1, 0), log_of(a, b), a, b)
    save(m, "n1", FakeRaft(term=1, commit_index=2), log_of(a, b), a, b)
    m.applied("n1", a)
    m.applied("n1", b)
    save(m, "n2", FakeRaft(LEADER, 2, 2), log_of(a, b))
    m.finish()
    assert m.violations == []


def test_two_leaders_in_one_term() -> None:
    m = monitor()
    m.observe_role("n0", FakeRaft(LEADER, 3))  # type: ignore[arg-type]
    m.observe_role("n0", FakeRaft(LEADER, 3))  # type: ignore[arg-type]
    m.observe_role("n1", FakeRaft(LEADER, 4))  # type: ignore[arg-type]
    assert m.violations == []
    m.observe_role("n2", FakeRaft(LEADER, 3))  # type: ignore[arg-type]
    assert "election safety" in m.violations[0]


def test_same_index_and_term_with_other_data() -> None:
    m = monitor()
    save(m, "n0", FakeRaft(), log_of(cmd(1, 1, 0)), cmd(1, 1, 0))
    save(m, "n1", FakeRaft(), log_of(cmd(1, 1, 9)), cmd(1, 1, 9))
    assert "log matching" in m.violations[0]


def test_same_entry_after_a_different_predecessor() -> None:
    m = monitor()
    save(m, "n0", FakeRaft(), log_of(cmd(1, 1, 0), cmd(2, 2, 1)), cmd(1, 1, 0), cmd(2, 2, 1))
    save(m, "n1", FakeRaft(), log_of(cmd(2, 1, 5), cmd(2, 2, 1)), cmd(2, 1, 5), cmd(2, 2, 1))
    assert "log matching" in m.violations[0]


def test_different_entries_committed_at_one_index() -> None:
    m = monitor()
    save(m, "n0", FakeRaft(commit_index=1), log_of(cmd(1, 1, 0)), cmd(1, 1, 0))
    save(m, "n1", FakeRaft(commit_index=1), log_of(cmd(2, 1, 1)), cmd(2, 1, 1))
    assert "state machine safety" in m.violations[0]


def test_applied_out_of_order_or_differently() -> None:
    m = monitor()
    save(m, "n0", FakeRaft(commit_index=1), log_of(cmd(1, 1, 0)), cmd(1, 1, 0))
    m.applied("n1", cmd(1, 2, 1))
    assert "applied index 2 right after 0" in m.violations[0]
    m.applied("n2", cmd(1, 1, 7))
    assert "state machine safety" in m.violations[1]


def test_a_command_committed_twice() -> None:
    m = monitor()
    a, b = cmd(1, 1, 5), cmd(1, 2, 5)
    save(m, "n0", FakeRaft(commit_index=2), log_of(a, b), a, b)
    assert "committed twice" in m.violations[0]


def test_snapshots_at_one_index_must_agree() -> None:
    m = monitor()
    m.snapshot_taken("n0", 4, b"x")
    m.snapshot_taken("n1", 4, b"x")
    assert m.violations == []
    m.installed("n2", SnapshotMeta(4, 1, ("n0",)), 4, b"y")
    assert "snapshots at index 4 differ" in m.violations[0]
    m.installed("n2", SnapshotMeta(5, 1, ("n0",)), 4, b"x")
    assert "installed an image of index 4" in m.violations[1]


def test_a_leader_without_a_committed_entry() -> None:
    m = monitor()
    a = cmd(1, 1, 0)
    save(m, "n0", FakeRaft(LEADER, 1, 1), log_of(a), a)
    # n1 leads term 2 with an empty log: entry 1 was committed in term 1.
    save(m, "n1", FakeRaft(LEADER, 2, 0), {})
    m.finish()
    assert len(m.violations) == 1
    assert "leader completeness" in m.violations[0]
    assert "n1" in m.violations[0]


def test_a_commit_seen_only_in_a_later_term_does_not_bind_earlier_leaders() -> None:
    m = monitor()
    a = cmd(1, 1, 0)
    save(m, "n1", FakeRaft(LEADER, 2, 0), {})  # led term 2 without entry 1
    # Entry 1 is first seen committed by a node in term 3: it may have been committed in 3.
    save(m, "n0", FakeRaft(LEADER, 3, 1), log_of(a), a)
    m.finish()
    assert m.violations == []


def test_a_commit_counted_but_not_saved() -> None:
    m = monitor()
    save(m, "n0", FakeRaft(commit_index=2), log_of(cmd(1, 1, 0)), cmd(1, 1, 0))
    assert "has not saved it" in m.violations[0]
