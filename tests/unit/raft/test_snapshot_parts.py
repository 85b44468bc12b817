"""`ImageReceiver`: a snapshot image written to a file part by part, handed over whole or not at
all, one image at a time."""

from __future__ import annotations

from pathlib import Path

import pytest

from ringfs.node.errors import NodeError
from ringfs.node.raft.core import SnapshotMeta, SnapshotRequest
from ringfs.node.raft.images import ImageReceiver

IMAGE = b"abcdefghij"


def request(src: str = "n1", term: int = 3, last_index: int = 40) -> SnapshotRequest:
    return SnapshotRequest(src, "n2", term, SnapshotMeta(last_index, term, ("n1", "n2", "n3")))


async def send(receiver: ImageReceiver, image: bytes = IMAGE, part: int = 4) -> None:
    for offset in range(0, len(image), part):
        await receiver.add_part("n1", 3, 40, len(image), offset, image[offset : offset + part])


def files(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())


async def test_parts_in_order_make_the_image_file_once(tmp_path: Path) -> None:
    receiver = ImageReceiver(tmp_path / "incoming")
    await send(receiver)
    image = receiver.take(request())
    assert image is not None
    assert image.read_bytes() == IMAGE
    assert receiver.take(request()) is None  # handed over: the caller owns the file now
    assert image.exists()


async def test_an_image_missing_its_last_parts_is_not_taken(tmp_path: Path) -> None:
    receiver = ImageReceiver(tmp_path / "incoming")
    await receiver.add_part("n1", 3, 40, len(IMAGE), 0, IMAGE[:4])
    await receiver.add_part("n1", 3, 40, len(IMAGE), 4, IMAGE[4:8])
    assert receiver.take(request()) is None
    assert files(tmp_path / "incoming") == []


async def test_a_new_image_replaces_an_unfinished_one_whoever_sends_it(tmp_path: Path) -> None:
    receiver = ImageReceiver(tmp_path / "incoming")
    await receiver.add_part("n1", 3, 40, 6, 0, b"old")
    await receiver.add_part("n3", 4, 55, 3, 0, b"new")
    assert len(files(tmp_path / "incoming")) == 1  # the unfinished one is deleted
    assert receiver.take(request("n1")) is None
    image = receiver.take(request("n3", term=4, last_index=55))
    assert image is not None
    assert image.read_bytes() == b"new"


async def test_a_request_from_another_sender_leaves_the_image_alone(tmp_path: Path) -> None:
    receiver = ImageReceiver(tmp_path / "incoming")
    await send(receiver)
    assert receiver.take(request("n3")) is None
    image = receiver.take(request("n1"))
    assert image is not None
    assert image.read_bytes() == IMAGE


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
async def test_a_part_that_does_not_continue_the_image_drops_it(
    tmp_path: Path, term: int, last_index: int, size: int, offset: int, data: bytes
) -> None:
    receiver = ImageReceiver(tmp_path / "incoming")
    await receiver.add_part("n1", 3, 40, 10, 0, b"abc")
    with pytest.raises(NodeError, match="out of sequence") as refused:
        await receiver.add_part("n1", term, last_index, size, offset, data)
    assert refused.value.name == "EINVAL"
    assert receiver.take(request()) is None
    assert files(tmp_path / "incoming") == []


async def test_a_part_without_a_start_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NodeError, match="out of sequence"):
        await ImageReceiver(tmp_path / "incoming").add_part("n1", 3, 40, 20, 10, b"x")


async def test_an_image_over_the_limit_is_refused_at_once(tmp_path: Path) -> None:
    receiver = ImageReceiver(tmp_path / "incoming", max_bytes=8)
    with pytest.raises(NodeError) as refused:
        await receiver.add_part("n1", 3, 40, 9, 0, b"12345")
    assert refused.value.name == "EFBIG"
    assert receiver.take(request()) is None


async def test_an_image_larger_than_the_free_space_is_refused(tmp_path: Path) -> None:
    receiver = ImageReceiver(tmp_path / "incoming", max_bytes=2**60)
    with pytest.raises(NodeError) as refused:
        await receiver.add_part("n1", 3, 40, 2**55, 0, b"12345")  # 32 PiB
    assert refused.value.name == "ENOSPC"
    assert files(tmp_path / "incoming") == []


async def test_the_request_must_match_the_parts(tmp_path: Path) -> None:
    receiver = ImageReceiver(tmp_path / "incoming")
    await send(receiver)
    assert receiver.take(request(last_index=41)) is None
    assert files(tmp_path / "incoming") == []


async def test_images_a_previous_run_left_are_deleted(tmp_path: Path) -> None:
    receiver = ImageReceiver(tmp_path / "incoming")
    await receiver.add_part("n1", 3, 40, 6, 0, b"abc")  # the node stops here
    ImageReceiver(tmp_path / "incoming")
    assert files(tmp_path / "incoming") == []
