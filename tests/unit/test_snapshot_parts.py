"""`SnapshotAssembler`: a snapshot image put back together from its parts, or not at all."""

from __future__ import annotations

import pytest

from ringfs.node.errors import NodeError
from ringfs.node.raft import SnapshotMeta, SnapshotRequest
from ringfs.node.raftrpc import SnapshotAssembler


def request(src: str = "n1", term: int = 3, last_index: int = 40) -> SnapshotRequest:
    return SnapshotRequest(src, "n2", term, SnapshotMeta(last_index, term, ("n1", "n2", "n3")))


def test_parts_in_order_make_the_image_once() -> None:
    assembler = SnapshotAssembler()
    for offset in (0, 4, 8):
        assembler.add_part("n1", 3, 40, offset, b"abcdefghij"[offset : offset + 4])
    assert assembler.take(request()) == b"abcdefghij"
    assert assembler.take(request()) is None  # handed over: gone


def test_each_sender_has_its_own_image() -> None:
    assembler = SnapshotAssembler()
    assembler.add_part("n1", 3, 40, 0, b"one")
    assembler.add_part("n3", 3, 40, 0, b"three")
    assert assembler.take(request("n3")) == b"three"
    assert assembler.take(request("n1")) == b"one"


def test_a_new_image_replaces_an_unfinished_one() -> None:
    assembler = SnapshotAssembler()
    assembler.add_part("n1", 3, 40, 0, b"old")
    assembler.add_part("n1", 4, 55, 0, b"new")
    assert assembler.take(request(term=3, last_index=40)) is None
    assembler.add_part("n1", 4, 55, 0, b"new")
    assert assembler.take(request(term=4, last_index=55)) == b"new"


@pytest.mark.parametrize(
    ("term", "last_index", "offset"),
    [(3, 40, 5), (3, 40, 2), (3, 41, 3), (4, 40, 3)],
    ids=["gap", "overlap", "other index", "other term"],
)
def test_a_part_that_does_not_continue_the_image_drops_it(
    term: int, last_index: int, offset: int
) -> None:
    assembler = SnapshotAssembler()
    assembler.add_part("n1", 3, 40, 0, b"abc")
    with pytest.raises(NodeError, match="out of sequence") as refused:
        assembler.add_part("n1", term, last_index, offset, b"def")
    assert refused.value.name == "EINVAL"
    assert assembler.take(request()) is None


def test_a_part_without_a_start_is_refused() -> None:
    with pytest.raises(NodeError, match="out of sequence"):
        SnapshotAssembler().add_part("n1", 3, 40, 10, b"x")


def test_an_image_over_the_limit_is_refused_and_dropped() -> None:
    assembler = SnapshotAssembler(max_bytes=8)
    assembler.add_part("n1", 3, 40, 0, b"12345")
    with pytest.raises(NodeError) as refused:
        assembler.add_part("n1", 3, 40, 5, b"6789")
    assert refused.value.name == "EFBIG"
    assert assembler.take(request()) is None


def test_the_request_must_match_the_parts() -> None:
    assembler = SnapshotAssembler()
    assembler.add_part("n1", 3, 40, 0, b"abc")
    assert assembler.take(request(last_index=41)) is None
