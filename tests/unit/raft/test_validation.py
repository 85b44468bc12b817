"""What a member refuses at its edge: integers out of reach, oversized lists, messages from
outside the group or for another node, terms that leap, and appends no leader would send."""

from __future__ import annotations

import random

import pytest

from ringfs.node.raft.core import (
    AppendRequest,
    Entry,
    EntryKind,
    Raft,
    SnapshotMeta,
    SnapshotRequest,
    VoteRequest,
    message_from_wire,
    message_to_wire,
)
from ringfs.node.raft.messages import (
    MAX_ENTRIES_PER_MESSAGE,
    MAX_TERM_LEAP,
    MAX_VOTERS,
    MAX_WIRE_INT,
    refusal,
)

IDS3 = ("n1", "n2", "n3")
MEMBERS = frozenset(IDS3)


def append(term: int, *entries: Entry, commit: int = 0) -> list[object]:
    return message_to_wire(AppendRequest("n1", "n2", term, 0, 0, entries, commit, 1))


def noop(term: int, index: int) -> Entry:
    return Entry(term, index, EntryKind.NOOP, b"")


BAD = {
    "term 2^63-1": append(2**63 - 1),
    "term past 2^62": append(MAX_WIRE_INT + 1),
    "commit past 2^62": append(3, commit=MAX_WIRE_INT + 1),
    "too many entries": append(1, *(noop(1, i) for i in range(1, MAX_ENTRIES_PER_MESSAGE + 2))),
    "snapshot without voters": [5, "n1", "n2", 3, [40, 3, []]],
    "snapshot with too many voters": [
        5,
        "n1",
        "n2",
        3,
        [40, 3, sorted(f"v{i:03d}" for i in range(MAX_VOTERS + 1))],
    ],  # fmt: skip
}


@pytest.mark.parametrize("wire", BAD.values(), ids=BAD.keys())
def test_out_of_range_wire_input_is_refused(wire: list[object]) -> None:
    with pytest.raises(ValueError, match="malformed Raft message"):
        message_from_wire(wire)


def test_the_largest_values_still_decode() -> None:
    entries = [noop(1, i) for i in range(1, MAX_ENTRIES_PER_MESSAGE + 1)]
    message = message_from_wire(append(MAX_WIRE_INT, *entries, commit=MAX_WIRE_INT))
    assert isinstance(message, AppendRequest)
    assert (message.term, message.commit) == (MAX_WIRE_INT, MAX_WIRE_INT)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (VoteRequest("n9", "n2", 5, 0, 0, False), "not another member"),
        (VoteRequest("n2", "n2", 5, 0, 0, False), "not another member"),
        (VoteRequest("n1", "n3", 5, 0, 0, False), "addressed to 'n3'"),
        (VoteRequest("n1", "n2", 5 + MAX_TERM_LEAP + 1, 0, 0, False), "leaps"),
    ],
)
def test_refusal_names_the_cause(message: VoteRequest, reason: str) -> None:
    assert reason in (refusal(message, "n2", MEMBERS, 5) or "")


def test_a_message_within_reach_is_taken() -> None:
    vote = VoteRequest("n1", "n2", 5 + MAX_TERM_LEAP, 0, 0, False)
    assert refusal(vote, "n2", MEMBERS, 5) is None


def test_an_append_rewriting_a_committed_entry_is_dropped_with_a_warning() -> None:
    raft = Raft("n2", IDS3, rng=random.Random(0))
    first = AppendRequest("n1", "n2", 1, 0, 0, (noop(1, 1), noop(1, 2)), 2, 1)
    raft.step(first)
    assert raft.commit_index == 2
    forged = AppendRequest("n3", "n2", 2, 0, 0, (noop(2, 1),), 2, 1)
    ready = raft.step(forged)
    assert ready.messages == ()
    assert ready.warnings == ("node n2: dropped an AppendRequest from n3 rewriting entry 1",)
    assert (raft.last_index, raft.commit_index) == (2, 2)


def test_a_conflict_after_the_commit_index_is_still_truncated() -> None:
    raft = Raft("n2", IDS3, rng=random.Random(0))
    raft.step(AppendRequest("n1", "n2", 1, 0, 0, (noop(1, 1), noop(1, 2), noop(1, 3)), 1, 1))
    ready = raft.step(AppendRequest("n3", "n2", 2, 1, 1, (noop(2, 2),), 1, 1))
    assert (ready.truncate_from, ready.append) == (2, (noop(2, 2),))
    assert raft.last_index == 2


def test_a_snapshot_of_a_huge_index_is_refused_before_the_core() -> None:
    meta = SnapshotMeta(MAX_WIRE_INT, 1, IDS3)
    wire = message_to_wire(SnapshotRequest("n1", "n2", 1, meta))
    assert message_from_wire(wire) == SnapshotRequest("n1", "n2", 1, meta)  # in range...
    wire[4] = [MAX_WIRE_INT + 1, 1, list(IDS3)]
    with pytest.raises(ValueError, match="malformed"):  # ...and one past it is not
        message_from_wire(wire)
