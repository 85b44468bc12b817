"""`SnapshotAssembler`: a snapshot image put back together from its parts, or not at all."""

from __future__ import annotations

import pytest

from ringfs.node.errors import NodeError
from ringfs.node.raft.core import SnapshotMeta, SnapshotRequest
from ringfs.node.raft.transport import SnapshotAssembler

IMAGE = b"abcdefghij"


def request(src: str = "n1", term: int = 3, last_index: int = 40) -> SnapshotRequest:
    return SnapshotRequest(src, "n2", term, SnapshotMeta(last_index, term, ("n1", "n2", "n3")))


def send(assembler: SnapshotAssembler, image: bytes = IMAGE, part: int = 4, **header: int) -> None:
    term, last_index = header.get("term", 3), header.get("last_index", 40)
    for offset in range(0, len(image), part):
        chunk = image[offset : offset + part]
        assembler.add_part("n1", term, last_index, len(image), offset, chunk)


def test_parts_in_order_make_the_image_once() -> None:
    assembler = SnapshotAssembler()
    send(assembler)
    assert assembler.take(request()) == IMAGE
    assert assembler.take(request()) is None  # handed over: gone


def test_an_image_missing_its_last_parts_is_not_taken() -> None:
    assembler = SnapshotAssembler()
    assembler.add_part("n1", 3, 40, len(IMAGE), 0, IMAGE[:4])
    assembler.add_part("n1", 3, 40, len(IMAGE), 4, IMAGE[4:8])
    assert assembler.take(request()) is None


def test_a_new_image_replaces_an_unfinished_one_whoever_sends_it() -> None:
    assembler = SnapshotAssembler()
    assembler.add_part("n1", 3, 40, 6, 0, b"old")
    assembler.add_part("n3", 4, 55, 3, 0, b"new")
    assert assembler.take(request("n1")) is None
    assert assembler.take(request("n3", term=4, last_index=55)) == b"new"


def test_a_request_from_another_sender_leaves_the_image_alone() -> None:
    assembler = SnapshotAssembler()
    send(assembler)
    assert assembler.take(request("n3")) is None
    assert assembler.take(request("n1")) == IMAGE


@pytest.mark.parametrize(
    ("term", "last_index", "size", "offset", "data"),
    [
        (3, 40, 10, 5, b"def"),
        (3, 40, 10, 2, b"def"),
        (3, 41, 10, 3, b"def"),
        (4, 40, 10, 3, b"def"),
        (3, 40, 12, 3, b"def"),
        (3, 40, 10, 3, b"defghijk"),
    ],
    ids=["gap", "overlap", "other index", "other term", "other size", "past the size"],
)
def test_a_part_that_does_not_continue_the_image_drops_it(
    term: int, last_index: int, size: int, offset: int, data: bytes
) -> None:
    assembler = SnapshotAssembler()
    assembler.add_part("n1", 3, 40, 10, 0, b"abc")
    with pytest.raises(NodeError, match="out of sequence") as refused:
        assembler.add_part("n1", term, last_index, size, offset, data)
    assert refused.value.name == "EINVAL"
    assert assembler.take(request()) is None


def test_a_part_without_a_start_is_refused() -> None:
    with pytest.raises(NodeError, match="out of sequence"):
        SnapshotAssembler().add_part("n1", 3, 40, 20, 10, b"x")


def test_an_image_over_the_limit_is_refused_at_once() -> None:
    assembler = SnapshotAssembler(max_bytes=8)
    with pytest.raises(NodeError) as refused:
        assembler.add_part("n1", 3, 40, 9, 0, b"12345")
    assert refused.value.name == "EFBIG"
    assert assembler.take(request()) is None


def test_the_request_must_match_the_parts() -> None:
    assembler = SnapshotAssembler()
    send(assembler)
    assert assembler.take(request(last_index=41)) is None
