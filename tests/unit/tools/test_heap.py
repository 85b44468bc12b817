"""A node's allocator keeps freed block-sized buffers: the next ones fault no pages in."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Blocks in flight, as on a node: four 4 MiB buffers allocated, touched and freed, 20 times
# over; prints the page faults it took.
CHURN = """
import resource, sys
from ringfs.tools.heap import keep_freed_buffers
if sys.argv[1] == "kept":
    assert keep_freed_buffers()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    buffers = [bytearray(4 * 1024 * 1024) for _ in range(4)]
    for buffer in buffers:
        buffer[::4096] = b"x" * len(buffer[::4096])
    del buffers, buffer
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", CHURN, mode], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="not glibc's allocator")
def test_freed_buffers_are_reused_warm() -> None:
    # In child processes: the settings would stay with this one.
    pages = 4 * 1024 * 1024 // 4096
    assert _faults("default") > 40 * pages  # most buffers are new memory
    assert _faults("kept") < 5 * pages  # the first four only
