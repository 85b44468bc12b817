"""The block store on a temporary directory: durability, verification and errno mapping."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from ringfs.node.blocks.store import HEADER_SIZE, BlockStore, checksum, validate_block_id
from ringfs.node.errors import CORRUPT, NodeError

ID = bytes(range(16))
OTHER = bytes(range(1, 17))
DATA = b"hello, blocks" * 1000


@pytest.fixture
def store(tmp_path: Path) -> BlockStore:
    return BlockStore(tmp_path / "store")


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
    assert store.stats().blocks == 1


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
def test_damaged_block_is_corrupt_and_quarantined(
    store: BlockStore, caplog: pytest.LogCaptureFixture, damage: object, expected_logs: list[str]
) -> None:
    expected_logs.append("is corrupt")
    store.put(ID, DATA, checksum(DATA))
    path = _file(store, ID)
    assert callable(damage)
    damage(path)
    with pytest.raises(NodeError) as info:
        store.get(ID)
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


def test_stats(store: BlockStore) -> None:
    empty = store.stats()
    assert (empty.blocks, empty.bytes) == (0, 0)
    assert 0 <= empty.free_bytes <= empty.capacity_bytes
    store.put(ID, DATA, checksum(DATA))
    store.put(OTHER, b"abc", checksum(b"abc"))
    stats = store.stats()
    assert (stats.blocks, stats.bytes) == (2, len(DATA) + 3)


@pytest.mark.parametrize("target", ["os.write", "os.fsync", "os.replace"])
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
