"""The block store on a temporary directory: durability, verification and errno mapping."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from ringfs.node.blocks.space import MiB, Reserve, Space
from ringfs.node.blocks.store import HEADER_SIZE, BlockStore, validate_block_id
from ringfs.node.checksum import checksum
from ringfs.node.errors import CORRUPT, NodeError

ID = bytes(range(16))
OTHER = bytes(range(1, 17))
DATA = b"hello, blocks" * 1000


@pytest.fixture
def store(tmp_path: Path) -> BlockStore:
    # No reserve: these tests are about blocks, not about how full this machine's disk is.
    return BlockStore(tmp_path / "store", Reserve(size=0))


def _file(store: BlockStore, block_id: bytes) -> Path:
    name = block_id.hex()
    return store.root / "blocks" / name[:2] / name[2:4] / name


def _error(exc_info: pytest.ExceptionInfo[NodeError]) -> str:
    return exc_info.value.name


def test_round_trip(store: BlockStore) -> None:
    store.put(ID, DATA, checksum(DATA))
    assert store.get(ID) == (DATA, checksum(DATA))
    assert _file(store, ID).stat().st_size == HEADER_SIZE + len(DATA)
    assert store.exists(ID)
    assert list(store.ids()) == [ID]


def test_memoryview_and_empty_blocks(store: BlockStore) -> None:
    store.put(ID, memoryview(DATA)[5:50], checksum(DATA[5:50]))
    store.put(OTHER, b"", checksum(b""))
    assert store.get(ID)[0] == DATA[5:50]
    assert store.get(OTHER) == (b"", checksum(b""))


def test_put_is_idempotent(store: BlockStore) -> None:
    store.put(ID, DATA, checksum(DATA))
    before = _file(store, ID).stat()
    store.put(ID, DATA, checksum(DATA))
    assert _file(store, ID).stat().st_ino == before.st_ino
    assert list(store.ids()) == [ID]


def test_put_with_other_checksum_is_eexist(store: BlockStore) -> None:
    store.put(ID, DATA, checksum(DATA))
    with pytest.raises(NodeError) as info:
        store.put(ID, b"other", checksum(b"other"))
    assert _error(info) == "EEXIST"
    assert store.get(ID)[0] == DATA


def test_bad_checksum_on_put_stores_nothing(store: BlockStore) -> None:
    with pytest.raises(NodeError) as info:
        store.put(ID, DATA, checksum(b"something else"))
    assert _error(info) == CORRUPT
    assert not store.exists(ID)
    assert list((store.root / "tmp").iterdir()) == []


@pytest.mark.parametrize("bad", [b"short", "x" * 32, None])
def test_malformed_checksum_is_einval(store: BlockStore, bad: object) -> None:
    with pytest.raises(NodeError) as info:
        store.put(ID, DATA, bad)  # type: ignore[arg-type]
    assert _error(info) == "EINVAL"


def _corrupt(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: _corrupt(p, HEADER_SIZE + 100), id="data-bit"),
        pytest.param(lambda p: _corrupt(p, 10), id="checksum-bit"),
        pytest.param(lambda p: _corrupt(p, 0), id="magic"),
        pytest.param(lambda p: os.truncate(p, HEADER_SIZE + 10), id="truncated"),
        pytest.param(lambda p: os.truncate(p, 20), id="truncated-header"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes() + b"x"), id="extended"),
    ],
)
@pytest.mark.parametrize("whole", [True, False], ids=["get", "get_span"])
def test_damaged_block_is_corrupt_and_quarantined(
    store: BlockStore,
    caplog: pytest.LogCaptureFixture,
    damage: object,
    whole: bool,
    expected_logs: list[str],
) -> None:
    """Also for a read of a few bytes of it: a block not verified a moment ago is read whole."""
    expected_logs.append("is corrupt")
    store.put(ID, DATA, checksum(DATA))
    path = _file(store, ID)
    assert callable(damage)
    damage(path)
    with pytest.raises(NodeError) as info:
        store.get(ID) if whole else store.get_span(ID, 0, 5)
    assert _error(info) == CORRUPT
    assert not path.exists()
    assert [p.name.split(".")[0] for p in (store.root / "quarantine").iterdir()] == [ID.hex()]
    assert [(r.levelno, ID.hex() in r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, True)
    ]
    # The bad copy is gone, so the block reads as missing and a repair put can replace it.
    with pytest.raises(NodeError) as missing:
        store.get(ID)
    assert _error(missing) == "ENOENT"
    store.put(ID, DATA, checksum(DATA))
    assert store.get(ID)[0] == DATA


@pytest.mark.parametrize("verified_first", [False, True], ids=["cold", "verified"])
def test_a_span_is_those_bytes_of_the_block(store: BlockStore, verified_first: bool) -> None:
    store.put(ID, DATA, checksum(DATA))
    if verified_first:
        store.get(ID)
    for offset, length in [(0, 10), (100, 4096), (len(DATA) - 5, 10), (len(DATA) + 3, 4), (7, 0)]:
        assert store.get_span(ID, offset, length) == (
            DATA[offset : offset + length],
            checksum(DATA),
        )


def test_a_span_of_a_block_verified_a_moment_ago_reads_only_its_bytes(
    store: BlockStore, expected_logs: list[str]
) -> None:
    """The trade documented in `ringfs.node.blocks.verified`: a byte that decays within the
    minute after a whole verification is not seen by reads of other bytes, and is by the next
    whole read; a deleted block is forgotten."""
    expected_logs.append("is corrupt")
    store.put(ID, DATA, checksum(DATA))
    store.get(ID)
    _corrupt(_file(store, ID), HEADER_SIZE + len(DATA) - 1)
    assert store.get_span(ID, 0, 100) == (DATA[:100], checksum(DATA))
    with pytest.raises(NodeError) as whole:
        store.get(ID)
    assert _error(whole) == CORRUPT
    with pytest.raises(NodeError) as gone:
        store.get_span(ID, 0, 100)
    assert _error(gone) == "ENOENT"
    store.put(OTHER, DATA, checksum(DATA))
    store.get(OTHER)
    assert store.delete(OTHER)
    store.put(OTHER, DATA[:50], checksum(DATA[:50]))
    _corrupt(_file(store, OTHER), HEADER_SIZE + 40)
    with pytest.raises(NodeError) as other:
        store.get_span(OTHER, 0, 10)  # not verified since it was put again: read whole
    assert _error(other) == CORRUPT


def test_a_damaged_header_of_a_verified_block_is_found_by_a_span(
    store: BlockStore, expected_logs: list[str]
) -> None:
    expected_logs.append("is corrupt")
    store.put(ID, DATA, checksum(DATA))
    store.get(ID)
    os.truncate(_file(store, ID), HEADER_SIZE + 10)
    with pytest.raises(NodeError) as info:
        store.get_span(ID, 0, 5)
    assert _error(info) == CORRUPT


def test_put_replaces_a_corrupt_copy(
    store: BlockStore, caplog: pytest.LogCaptureFixture, expected_logs: list[str]
) -> None:
    expected_logs.append("is corrupt")
    store.put(ID, DATA, checksum(DATA))
    _corrupt(_file(store, ID), HEADER_SIZE)
    store.put(ID, DATA, checksum(DATA))
    assert store.get(ID)[0] == DATA
    assert len(list((store.root / "quarantine").iterdir())) == 1
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


SHA256 = hashlib.sha256(DATA).digest()


def test_a_block_keeps_the_kind_of_checksum_it_was_put_with(store: BlockStore) -> None:
    store.put(ID, DATA, checksum(DATA))
    store.put(OTHER, DATA, SHA256)  # a copy made from a block of version 12 or before
    assert store.get(ID) == (DATA, checksum(DATA))
    assert store.get(OTHER) == (DATA, SHA256)
    assert _file(store, ID).read_bytes()[:4] == b"RFB2"
    assert _file(store, OTHER).read_bytes()[:4] == b"RFB1"
    store.put(OTHER, DATA, SHA256)  # idempotent with the old kind too
    with pytest.raises(NodeError) as info:
        store.put(OTHER, DATA, checksum(DATA))
    assert _error(info) == "EEXIST"


def test_a_block_file_of_version_12_reads_and_verifies(
    store: BlockStore, expected_logs: list[str]
) -> None:
    expected_logs.append("is corrupt")
    header = b"RFB1" + len(DATA).to_bytes(8, "big") + SHA256
    for block_id in (ID, OTHER):
        _file(store, block_id).parent.mkdir(parents=True, exist_ok=True)
        _file(store, block_id).write_bytes(header + DATA)
    assert store.get(ID) == (DATA, SHA256)
    _corrupt(_file(store, OTHER), HEADER_SIZE + 7)
    with pytest.raises(NodeError) as info:
        store.get(OTHER)
    assert _error(info) == CORRUPT


def test_missing_block(store: BlockStore) -> None:
    with pytest.raises(NodeError) as info:
        store.get(ID)
    assert _error(info) == "ENOENT"
    assert not store.exists(ID)
    assert store.delete(ID) is False


@pytest.mark.parametrize(
    "bad", ["0" * 16, b"\x00" * 15, b"\x00" * 17, b"../../etc/passwd/", "../../etc/passwd", None]
)
def test_invalid_ids_are_einval(store: BlockStore, bad: object) -> None:
    with pytest.raises(NodeError) as info:
        validate_block_id(bad)
    assert _error(info) == "EINVAL"
    for call in (store.get, store.exists, store.delete):
        with pytest.raises(NodeError) as info:
            call(bad)  # type: ignore[arg-type]
        assert _error(info) == "EINVAL"
    with pytest.raises(NodeError) as info:
        store.put(bad, DATA, checksum(DATA))  # type: ignore[arg-type]
    assert _error(info) == "EINVAL"


def test_path_like_id_stays_inside_the_store(store: BlockStore, tmp_path: Path) -> None:
    # Exactly 16 bytes, so a valid id: it names a hex file name, never a path.
    sneaky = b"../../etc/passwd"
    store.put(sneaky, DATA, checksum(DATA))
    assert _file(store, sneaky).is_file()
    assert store.get(sneaky)[0] == DATA
    outside = {p for p in tmp_path.rglob("*") if not p.is_relative_to(store.root)}
    assert outside == set()


def test_delete(store: BlockStore) -> None:
    store.put(ID, DATA, checksum(DATA))
    store.put(OTHER, b"x", checksum(b"x"))
    assert store.delete(ID) is True
    assert not store.exists(ID)
    assert list(store.ids()) == [OTHER]


def test_ids_ignore_foreign_files(store: BlockStore) -> None:
    store.put(ID, DATA, checksum(DATA))
    (store.root / "blocks" / "README").write_text("not a block")
    (_file(store, ID).parent / "notes.txt").write_text("not a block")
    (store.root / "blocks" / "zz").mkdir()
    assert list(store.ids()) == [ID]


def test_stats(store: BlockStore, expected_logs: list[str]) -> None:
    expected_logs.append("is corrupt")
    assert not store.stats().counted  # nothing counted before the first walk
    store.count()
    empty = store.stats()
    assert (empty.blocks, empty.bytes, empty.counted) == (0, 0, True)
    assert 0 <= empty.space.free <= empty.space.capacity
    assert empty.space.reserve == 0
    store.put(ID, DATA, checksum(DATA))
    store.put(OTHER, b"abc", checksum(b"abc"))
    store.put(OTHER, b"abc", checksum(b"abc"))
    stats = store.stats()
    assert (stats.blocks, stats.bytes) == (2, len(DATA) + 3)
    stored = _file(store, OTHER).read_bytes()
    _file(store, OTHER).write_bytes(stored[:-1] + b"X")  # corrupt
    with pytest.raises(NodeError):
        store.get(OTHER)  # quarantined
    store.delete(ID)
    assert (store.stats().blocks, store.stats().bytes) == (0, 0)


def _walked(store: BlockStore) -> tuple[int, int]:
    sizes = [entry.stat().st_size - HEADER_SIZE for entry in store._files()]
    return len(sizes), sum(sizes)


def test_the_count_stays_exact_while_blocks_come_and_go(tmp_path: Path) -> None:
    store = BlockStore(tmp_path)
    rng = random.Random(3)
    ids = [rng.randbytes(16) for _ in range(300)]
    contents = {block_id: block_id * rng.randrange(1, 40) for block_id in ids}
    for block_id in ids[::2]:
        store.put(block_id, contents[block_id], checksum(contents[block_id]))
    stop = threading.Event()

    def churn(seed: int) -> None:
        choice = random.Random(seed)
        while not stop.is_set():
            block_id = choice.choice(ids)
            if choice.random() < 0.5:
                store.put(block_id, contents[block_id], checksum(contents[block_id]))
            else:
                store.delete(block_id)

    workers = [threading.Thread(target=churn, args=(seed,)) for seed in range(3)]
    for worker in workers:
        worker.start()
    try:
        store.count()
        time.sleep(0.05)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    stats = store.stats()
    assert stats.counted
    assert (stats.blocks, stats.bytes) == _walked(store)


@pytest.mark.parametrize("target", ["os.write", "os.fsync", "os.mkdir", "os.replace"])
def test_enospc_leaves_nothing(
    store: BlockStore, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(target, full)
    with pytest.raises(NodeError) as info:
        store.put(ID, DATA, checksum(DATA))
    monkeypatch.undo()
    assert _error(info) == "ENOSPC"
    assert info.value.errno == errno.ENOSPC
    assert list((store.root / "tmp").iterdir()) == []
    assert not store.exists(ID)


def test_read_error_keeps_errno_name(store: BlockStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.put(ID, DATA, checksum(DATA))

    def broken(*args: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr("os.fstat", broken)
    with pytest.raises(NodeError) as info:
        store.get(ID)
    monkeypatch.undo()
    assert _error(info) == "EIO"
    assert store.get(ID)[0] == DATA


def test_startup_removes_stale_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "store"
    BlockStore(root).put(ID, DATA, checksum(DATA))
    (root / "tmp" / "leftover").write_bytes(b"half a block")
    store = BlockStore(root)
    assert list((root / "tmp").iterdir()) == []
    assert store.get(ID)[0] == DATA


class _Disk:
    """A filesystem of 1 GiB, as statvfs reports it; blocks put through the store use it up."""

    UNIT = 4096

    def __init__(self, free: int, inodes: int = 10_000) -> None:
        self.free = free
        self.inodes = inodes

    def space(self) -> Space:
        return Space(total=1 << 30, free=self.free, unit=self.UNIT, inodes_free=self.inodes)


@pytest.fixture
def disk(store: BlockStore, monkeypatch: pytest.MonkeyPatch) -> _Disk:
    disk = _Disk(free=100 * MiB)
    monkeypatch.setattr(store, "_space", disk.space)
    store.reserve = Reserve(size=90 * MiB)
    return disk


def test_a_block_that_would_eat_into_the_reserve_is_refused_before_writing(
    store: BlockStore, disk: _Disk, caplog: pytest.LogCaptureFixture, expected_logs: list[str]
) -> None:
    expected_logs.append("is full")
    caplog.set_level(logging.INFO)
    fits = b"x" * (10 * MiB - HEADER_SIZE - 3 * disk.UNIT)
    store.put(ID, fits, checksum(fits))
    too_big = fits + b"x" * (disk.UNIT + 1)
    for _ in range(2):
        with pytest.raises(NodeError) as info:
            store.put(OTHER, too_big, checksum(too_big))
        assert _error(info) == "ENOSPC"
    assert not store.exists(OTHER)
    assert list((store.root / "tmp").iterdir()) == []
    # Logged once when it fills up, once when it has room again, not per block.
    disk.free = 200 * MiB
    store.put(OTHER, too_big, checksum(too_big))
    assert [
        (r.levelno, r.getMessage().split("(")[0])
        for r in caplog.records
        if r.name.endswith("store")
    ] == [
        (logging.WARNING, f"block store {store.root} is full "),
        (logging.INFO, f"block store {store.root} has room again"),
    ]


def test_a_stored_block_is_acknowledged_again_even_when_full(
    store: BlockStore, disk: _Disk
) -> None:
    store.put(ID, DATA, checksum(DATA))
    disk.free = 0
    store.put(ID, DATA, checksum(DATA))  # a retried write: the copy is already there


def test_writes_under_way_count_against_the_reserve(
    store: BlockStore, disk: _Disk, monkeypatch: pytest.MonkeyPatch, expected_logs: list[str]
) -> None:
    expected_logs.append("is full")
    half = b"y" * (5 * MiB)
    seen: list[str] = []

    write = store._writer.write

    def write_first(fd: int, parts: Sequence[bytes | memoryview]) -> None:
        # While the first block is being written (statvfs does not show it yet), a second
        # one of the same size arrives: together they would cross the mark.
        if not seen:
            seen.append("first")
            with pytest.raises(NodeError) as info:
                store.put(OTHER, half, checksum(half))
            seen.append(_error(info))
        write(fd, parts)

    monkeypatch.setattr(store._writer, "write", write_first)
    disk.free = 90 * MiB + 8 * MiB
    store.put(ID, half, checksum(half))
    assert seen == ["first", "ENOSPC"]
    assert store.exists(ID)
    assert not store.exists(OTHER)


def test_inodes_are_kept_too(store: BlockStore, disk: _Disk, expected_logs: list[str]) -> None:
    expected_logs.append("is full")
    disk.inodes = 100
    with pytest.raises(NodeError) as info:
        store.put(ID, b"tiny", checksum(b"tiny"))
    assert _error(info) == "ENOSPC"
    assert "inodes" in info.value.detail


def test_capacity_leaves_the_reserve_out(store: BlockStore, disk: _Disk) -> None:
    space = store.capacity()
    assert (space.capacity, space.free, space.reserve) == ((1 << 30) - 90 * MiB, 10 * MiB, 90 * MiB)
    disk.free = 10 * MiB
    assert store.capacity().free == 0


def test_delete_is_durable(store: BlockStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.put(ID, DATA, checksum(DATA))
    synced: list[Path] = []
    monkeypatch.setattr("ringfs.node.blocks.store.fsync_dir", synced.append)
    assert store.delete(ID) is True
    assert synced == [_file(store, ID).parent]


def test_ids_after_lists_in_id_order_from_a_point(tmp_path: Path) -> None:
    store = BlockStore(tmp_path)
    rng = random.Random(5)
    ids = sorted({rng.randbytes(16) for _ in range(200)} | {bytes(16), b"\xff" * 16})
    for block_id in ids:
        store.put(block_id, b"x", checksum(b"x"))
    assert list(store.ids_after(None)) == ids
    for after in (ids[0], ids[57], ids[-2], ids[-1], b"\x80" + bytes(15)):
        assert list(store.ids_after(after)) == [i for i in ids if i > after]
    assert store.absent([ids[3], b"\x01" * 16]) == [b"\x01" * 16]
