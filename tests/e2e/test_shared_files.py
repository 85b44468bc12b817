"""Two real mounts of one cluster writing one file: every promise of docs/consistency.md,
checked byte for byte.

- Close-to-open: an open sees everything another mount wrote before its close or fsync, even
  when this mount had only looked the file up (its kernel cached the old size).
- Writes of several mounts to different bytes are all kept; overlapping writes end as one
  whole flush or the other, never a mix, never zeros or bytes nobody wrote.
- A truncation is never undone by another mount's stale flush.
- O_APPEND writers on several mounts never overwrite each other: every record fsync'd or
  closed is in the file exactly once.
"""

from __future__ import annotations

import ctypes
import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Mount

pytestmark = pytest.mark.fuse

MiB = 1024 * 1024


@pytest.fixture
def two(mount_factory: Callable[..., Mount]) -> tuple[Path, Path]:
    return mount_factory("a").path, mount_factory("b").path


def record(tag: str, i: int) -> bytes:
    """A record that tells who wrote it and when, of varying length (some cross 4 KiB pages)."""
    return f"{tag}{i:04d}:".encode() + tag.encode() * (i * 331 % 5000) + b"\n"


def records_in(data: bytes) -> list[bytes]:
    lines = [line + b"\n" for line in data.split(b"\n")]
    assert lines.pop() == b"\n", "the file does not end with a whole record"
    return lines


def in_parallel(*actions: Callable[[], None]) -> None:
    """Run each action in its own thread; re-raise the first failure."""
    failures: list[BaseException] = []

    def run(action: Callable[[], None]) -> None:
        try:
            action()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    if failures:
        raise failures[0]


def check_appended(data: bytes, expected: dict[str, list[bytes]]) -> None:
    """Every record exactly once, each writer's in its own order, and nothing else."""
    found = records_in(data)
    assert sorted(found) == sorted(r for records in expected.values() for r in records)
    for tag, records in expected.items():
        assert [r for r in found if r.startswith(tag.encode())] == records


def test_appends_with_fsync_from_two_mounts_keep_every_record(two: tuple[Path, Path]) -> None:
    a, b = two
    (a / "log").write_bytes(b"")
    written: dict[str, list[bytes]] = {"A": [], "B": []}

    def append(mount: Path, tag: str) -> None:
        fd = os.open(mount / "log", os.O_WRONLY | os.O_APPEND)
        try:
            for i in range(200):
                os.write(fd, record(tag, i))
                os.fsync(fd)
                written[tag].append(record(tag, i))
        finally:
            os.close(fd)

    in_parallel(lambda: append(a, "A"), lambda: append(b, "B"))
    check_appended((a / "log").read_bytes(), written)
    check_appended((b / "log").read_bytes(), written)


def test_appends_closing_after_each_record_from_two_mounts(two: tuple[Path, Path]) -> None:
    a, b = two
    (a / "log").write_bytes(b"")
    written: dict[str, list[bytes]] = {"A": [], "B": []}

    def append(mount: Path, tag: str) -> None:
        for i in range(60):
            with open(mount / "log", "ab") as file:  # O_APPEND, as `>>` in a shell
                file.write(record(tag, i))
            written[tag].append(record(tag, i))

    in_parallel(lambda: append(a, "A"), lambda: append(b, "B"))
    check_appended((b / "log").read_bytes(), written)


def test_disjoint_writes_from_two_mounts_are_all_kept(two: tuple[Path, Path]) -> None:
    a, b = two
    base = os.urandom(4 * MiB)
    (a / "f").write_bytes(base)
    ours, theirs = os.urandom(MiB), os.urandom(MiB)

    def write(mount: Path, offset: int, data: bytes) -> None:
        fd = os.open(mount / "f", os.O_WRONLY)
        try:
            for start in range(0, len(data), 64 * 1024):  # many writes, one fsync
                os.pwrite(fd, data[start : start + 64 * 1024], offset + start)
            os.fsync(fd)
        finally:
            os.close(fd)

    in_parallel(lambda: write(a, 0, ours), lambda: write(b, 2 * MiB, theirs))
    expected = ours + base[MiB : 2 * MiB] + theirs + base[3 * MiB :]
    assert (a / "f").read_bytes() == expected
    assert (b / "f").read_bytes() == expected


def test_overlapping_writes_end_as_one_whole_flush(two: tuple[Path, Path]) -> None:
    a, b = two
    (a / "f").write_bytes(b"")
    ours, theirs = os.urandom(6 * MiB), os.urandom(6 * MiB)
    in_parallel(lambda: (a / "f").write_bytes(ours), lambda: (b / "f").write_bytes(theirs))
    final = (a / "f").read_bytes()
    assert final in (ours, theirs)
    assert (b / "f").read_bytes() == final


def test_a_stale_handle_never_undoes_a_truncation(two: tuple[Path, Path]) -> None:
    a, b = two
    old = os.urandom(9 * MiB)
    (a / "f").write_bytes(old)
    stale = os.open(b / "f", os.O_RDWR)  # b's map: three chunks of old data
    try:
        os.truncate(a / "f", 100)
        with open(a / "f", "r+b") as file:
            file.write(b"A" * 100)
        os.pwrite(stale, b"B" * 10, 50)
    finally:
        os.close(stale)  # the flush of a handle opened before the truncation
    expected = b"A" * 50 + b"B" * 10 + b"A" * 40
    assert (a / "f").read_bytes() == expected
    assert (b / "f").read_bytes() == expected


def test_an_open_after_a_lookup_reads_what_another_mount_closed(two: tuple[Path, Path]) -> None:
    a, b = two
    first = os.urandom(1000)
    (a / "f").write_bytes(first)
    assert (b / "f").stat().st_size == 1000  # b's kernel now holds the size 1000
    assert sorted(os.listdir(b)) == ["f"]
    more = os.urandom(5000)
    with open(a / "f", "ab") as file:
        file.write(more)
    assert (b / "f").read_bytes() == first + more


def test_cp_a_shows_content_mode_and_times_in_another_mount(
    two: tuple[Path, Path], tmp_path: Path
) -> None:
    """`cp -a` sets times and mode between its last write and close; they ride with the data's
    commit, and another mount sees all three as the source has them."""
    a, b = two
    source = tmp_path / "tree"
    (source / "sub").mkdir(parents=True)
    files = {"sub/tool": (os.urandom(70_000), 0o755), "notes": (os.urandom(3000), 0o640)}
    for name, (data, mode) in files.items():
        (source / name).write_bytes(data)
        os.chmod(source / name, mode)
        os.utime(source / name, ns=(1_500_000_000 * 10**9, 1_600_000_000 * 10**9 + 7))
    subprocess.run(["cp", "-a", str(source), str(a / "copy")], check=True)
    for name, (data, mode) in files.items():
        there = b / "copy" / name
        assert there.read_bytes() == data
        st = os.stat(there)
        assert stat.S_IMODE(st.st_mode) == mode
        assert st.st_mtime_ns == 1_600_000_000 * 10**9 + 7


def test_a_file_written_long_without_a_flush_shows_in_another_mount(
    mount_factory: Callable[..., Mount],
) -> None:
    """Full chunks a mount uploaded are committed within `--commit-within` (here 2 s, 30 s
    by default) though the writer neither closes nor fsyncs: the other mount then reads
    them, byte for byte."""
    a = mount_factory("a", args=("--commit-within", "2")).path
    b = mount_factory("b").path
    data = os.urandom(3 * 4 * 1024 * 1024)  # three full 4 MiB chunks
    fd = os.open(a / "long", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        # Have the kernel hand its cached pages to the mount without an fsync.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.sync_file_range.argtypes = [
            ctypes.c_int,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_uint,
        ]
        assert libc.sync_file_range(fd, 0, 0, 7) == 0  # WAIT_BEFORE | WRITE | WAIT_AFTER
        # Well before the default 30 s: the option is what made it come.
        deadline = time.monotonic() + 20
        while (b / "long").stat().st_size < len(data):
            assert time.monotonic() < deadline, "not committed within 20 s without a flush"
            time.sleep(0.5)
        assert (b / "long").read_bytes() == data
    finally:
        os.close(fd)
