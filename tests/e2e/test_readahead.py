"""The kernel's readahead window of a real mount (`ringfs.fs.kernel_readahead`): widened
after the kernel's INIT (whose answer would narrow it again), and sequential reads through it
come back byte for byte."""

from __future__ import annotations

import os
from pathlib import Path

from ringfs.fs.kernel_readahead import READAHEAD_KIB

MiB = 1024 * 1024


def readahead_kib(path: Path) -> int:
    device = os.stat(path).st_dev
    bdi = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
    return int(bdi.read_text())


def test_a_mount_reads_ahead_whole_requests(mounted: Path) -> None:
    assert readahead_kib(mounted) == READAHEAD_KIB
    data = os.urandom(9 * MiB + 12345)
    path = mounted / "big"
    path.write_bytes(data)
    with open(path, "rb", buffering=0) as file:
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        got = bytearray()
        while chunk := file.read(MiB):
            got += chunk
    assert got == data
