"""Block files written around the page cache: the same bytes as a buffered write, whatever
the alignment of their length, and a buffered write where the filesystem refuses O_DIRECT."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ringfs.node.blocks.direct import ALIGNMENT, KEPT_BUFFERS, DirectWriter

HEADER = b"RFB1" + bytes(range(40))


def _written(writer: DirectWriter, path: Path, parts: Sequence[bytes | memoryview]) -> bytes:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        writer.write(fd, parts)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path.read_bytes()


@pytest.fixture
def direct_files(tmp_path: Path) -> Path:
    """A directory on a filesystem that takes O_DIRECT writes (the test is skipped if not)."""
    probe = DirectWriter()
    _written(probe, tmp_path / "probe", [b"x"])
    if not probe.direct:
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    return tmp_path


@pytest.mark.parametrize(
    "length", [0, 1, ALIGNMENT - len(HEADER), ALIGNMENT, 3 * ALIGNMENT + 17, 4 << 20]
)
def test_a_direct_write_stores_exactly_its_parts(direct_files: Path, length: int) -> None:
    data = os.urandom(length)
    writer = DirectWriter()
    assert _written(writer, direct_files / "block", [HEADER, memoryview(data)]) == HEADER + data
    assert writer.direct


def test_a_direct_write_leaves_the_descriptor_direct_and_the_buffer_for_the_next(
    direct_files: Path,
) -> None:
    writer = DirectWriter()
    fd = os.open(direct_files / "block", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        writer.write(fd, [HEADER, b"data"])
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
    finally:
        os.close(fd)
    # The next block, shorter, reuses the buffer and shows none of the first one's bytes.
    assert _written(writer, direct_files / "next", [b"ab"]) == b"ab"


def test_a_refused_flag_falls_back_to_buffered_writes_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fcntl = fcntl.fcntl
    refusals = []

    def no_direct(fd: int, command: int, arg: Any = 0) -> Any:
        if command == fcntl.F_SETFL and arg & os.O_DIRECT:
            refusals.append(fd)
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real_fcntl(fd, command, arg)

    monkeypatch.setattr(fcntl, "fcntl", no_direct)
    writer = DirectWriter()
    assert _written(writer, tmp_path / "one", [HEADER, b"first"]) == HEADER + b"first"
    assert not writer.direct
    assert _written(writer, tmp_path / "two", [HEADER, b"second"]) == HEADER + b"second"
    assert len(refusals) == 1


def test_a_refused_write_starts_again_buffered_from_the_beginning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    calls = []

    def refuse_the_first_write(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            real_write(fd, bytes(data)[:100])  # as if part of it had gone through
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", refuse_the_first_write)
    writer = DirectWriter()
    data = os.urandom(10_000)
    assert _written(writer, tmp_path / "block", [HEADER, data]) == HEADER + data
    assert not writer.direct


def test_other_errors_are_the_callers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: bytes | memoryview) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    writer = DirectWriter()
    with pytest.raises(OSError, match=os.strerror(errno.ENOSPC)) as info:
        _written(writer, tmp_path / "block", [HEADER, b"data"])
    assert info.value.errno == errno.ENOSPC
    assert writer.direct


def test_concurrent_writes_each_store_their_own_bytes(direct_files: Path) -> None:
    writer = DirectWriter()
    contents = {f"b{index}": os.urandom(100_000 + index * 997) for index in range(3 * KEPT_BUFFERS)}
    failures: list[str] = []

    def put(name: str) -> None:
        for round_ in range(3):
            path = direct_files / f"{name}.{round_}"
            if _written(writer, path, [HEADER, contents[name]]) != HEADER + contents[name]:
                failures.append(path.name)

    threads = [threading.Thread(target=put, args=(name,)) for name in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
