"""An append followed by fsync commits the bytes it added as the chunk's tail, kept by the
metadata, instead of writing the chunk again: a log fsync'd record by record reads back byte
for byte in another mount, stays whole when the mount that wrote it dies, and is cut right by
truncations."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
from collections.abc import Callable

import pytest

from ringfs.node.meta.commands import TAIL_MAX
from tests.conftest import free_ports
from tests.e2e.conftest import Mount
from tests.e2e.test_metrics import scrape

pytestmark = pytest.mark.fuse


def records(count: int, seed: int) -> list[bytes]:
    """Log records of 1 byte to 24 KiB: about 12 KiB each."""
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(1, 24 * 1024)) for _ in range(count)]


def test_a_log_fsynced_record_by_record(mount_factory: Callable[..., Mount]) -> None:
    """Past a chunk boundary (4 MiB), with another mount reading as it grows."""
    port = free_ports(1)[0]
    a = mount_factory("a", args=("--metrics", f"127.0.0.1:{port}")).path
    b = mount_factory("b").path
    written = bytearray()
    with open(a / "log", "ab") as log:
        for i, record in enumerate(records(400, seed=1)):
            log.write(record)
            log.flush()
            os.fsync(log.fileno())
            written += record
            if i % 80 == 79:
                assert (b / "log").read_bytes() == written  # an open sees every fsync before it
    assert len(written) > 4 * 1024 * 1024
    assert (b / "log").read_bytes() == written
    assert (a / "log").read_bytes() == written
    # Writing each fsync's chunk again stores about 170 times the log (a block of 2 MiB on
    # average per fsync); a block per `TAIL_MAX` (64 KiB) appended, about 30 times.
    stored = scrape(port)["ringfs_mount_written_bytes_total"]
    print(f"{len(written)} bytes appended, {stored:.0f} bytes of blocks stored")
    assert TAIL_MAX == 64 * 1024
    assert stored < 60 * len(written)


def test_what_was_fsynced_survives_a_crash_of_the_writer(
    mount_factory: Callable[..., Mount],
) -> None:
    a = mount_factory("a")
    synced = bytearray()
    log = os.open(a.path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for record in records(100, seed=2):
        os.write(log, record)
        os.fsync(log)
        synced += record
    os.write(log, b"never synced")
    a.process.kill()  # no unmount, no release: what fsync made durable is all that counts
    a.process.wait()
    with contextlib.suppress(OSError):
        os.close(log)  # the mount is gone
    subprocess.run(["fusermount3", "-uz", str(a.path)], check=False, capture_output=True)
    again = mount_factory("again").path
    assert (again / "log").read_bytes() == synced


def test_truncations_cut_the_tail(mount_factory: Callable[..., Mount]) -> None:
    a, b = mount_factory("a").path, mount_factory("b").path
    expected = bytearray()

    def append(data: bytes) -> None:
        with open(a / "log", "ab") as log:
            log.write(data)
            log.flush()
            os.fsync(log.fileno())
        expected.extend(data)

    append(os.urandom(100_000))  # a stored block
    append(b"t" * 1000)  # and a tail after it
    for size in (100_500, 99_000, 150_000):  # into the tail, into the block, past the end
        os.truncate(a / "log", size)
        del expected[size:]
        expected.extend(bytes(size - len(expected)))
        append(os.urandom(3000))
        assert (b / "log").read_bytes() == expected
