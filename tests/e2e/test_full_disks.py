"""Full disks: four nodes on small loop-mounted ext4 filesystems, a real mount, real tools.

Each node's disk is first filled with other data (a filler file) down to a little more than
the block store's reserve, so ringfs blocks fill it quickly. What must hold: a full disk never
stops a node, writers get ENOSPC promptly, the metadata keeps working, deleting files makes
room again, and nothing acknowledged is lost.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_ports
from tests.e2e import loopfs
from tests.e2e.conftest import Cluster, Mount, NodeProcess, wait_for
from tests.e2e.test_faults import node_lines
from tests.e2e.test_meta_failover import leader_of
from tests.e2e.test_tools import MiB, random_file

pytestmark = pytest.mark.fuse

DISK_SIZE = 320 * MiB
# The block store's default reserve on a disk this small: its 64 MiB floor.
RESERVE = 64 * MiB
# One file is one 4 MiB chunk, so one block.
FILE_SIZE = 4 * MiB
# How long a writer may wait for ENOSPC: far below the 20 s metadata deadline, after which a
# lost quorum would have given EIO instead.
PROMPT = 10.0


@pytest.fixture
def disks(tmp_path: Path) -> Iterator[list[loopfs.Disk]]:
    reason = loopfs.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                loopfs.disk(tmp_path / f"disk{i}.img", tmp_path / f"disk{i}", DISK_SIZE)
            )
            for i in range(1, 5)
        ]


@pytest.fixture
def cluster(disks: list[loopfs.Disk], cluster: Cluster) -> Cluster:
    """Four nodes, each with its data directory on its own small disk.

    `disks` comes first in the arguments, so it is set up first and taken down last: after
    the cluster fixture has stopped every node.
    """
    for node in cluster.nodes:
        cluster.stop(node)
    taken = {node.port for node in cluster.nodes}
    port = next(port for port in free_ports(4) if port not in taken)
    cluster.nodes.append(NodeProcess("n4", port, Path()))
    for node, disk in zip(cluster.nodes, disks, strict=True):
        node.data = disk.path / "data"
    # Garbage becomes collectable after 1 s instead of a minute.
    cluster.node_args = ("--gc-grace", "1")
    cluster.start(*cluster.nodes)
    return cluster


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_all_running(cluster: Cluster) -> None:
    exited = {n.name: n.process.poll() for n in cluster.nodes if n.process is not None}
    assert all(status is None for status in exited.values()), f"nodes exited: {exited}"
    lines = node_lines(cluster.status())
    assert all(" active " in lines[n.name] for n in cluster.nodes), lines


@dataclass
class Filled:
    """The mount after cp filled every disk: the files written, and the cp that failed."""

    mounted: Path
    written: dict[str, str]  # name -> sha256
    error: str
    elapsed: float


@pytest.fixture
def filled(disks: list[loopfs.Disk], mounted: Path, tmp_path: Path) -> Filled:
    """Every disk filled to a little above its reserve, then cp files in until one fails."""
    for disk in disks:
        disk.fill(leave=RESERVE + 12 * MiB)
    source = tmp_path / "source"
    written: dict[str, str] = {}
    for i in range(200):
        random_file(source, FILE_SIZE)
        start = time.monotonic()
        copy = subprocess.run(
            ["cp", str(source), str(mounted / f"f{i}")], capture_output=True, text=True
        )
        if copy.returncode != 0:
            return Filled(mounted, written, copy.stderr, time.monotonic() - start)
        written[f"f{i}"] = sha256(source)
    raise AssertionError("the disks never filled")


def change_the_namespace(mounted: Path, written: dict[str, str], dirs: int) -> None:
    """mkdir, mv and rm: none needs block space. Keeps `written` true."""
    (mounted / "dir").mkdir()
    for i in range(dirs):
        (mounted / "dir" / f"sub{i}").mkdir()
    (mounted / "f0").rename(mounted / "dir" / "f0")
    written["dir/f0"] = written.pop("f0")
    (mounted / "f1").unlink()
    del written["f1"]
    assert len(list((mounted / "dir").iterdir())) == dirs + 1


def assert_reads_back(mounted: Path, written: dict[str, str]) -> None:
    for name, digest in written.items():
        assert sha256(mounted / name) == digest, f"{name} reads back wrong"


def test_one_full_disk_hands_off_and_its_node_keeps_serving(
    cluster: Cluster, disks: list[loopfs.Disk], mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    mounted = mount_factory().path
    # The meta leader's disk: the Raft log and the metadata database live there too.
    full = [n.name for n in cluster.nodes].index(leader_of(cluster))
    disks[full].fill(leave=RESERVE + 8 * MiB)
    files = 30

    written = {}
    for i in range(files):
        source = random_file(tmp_path / "source", FILE_SIZE)
        subprocess.run(["cp", str(source), str(mounted / f"f{i}")], check=True)
        written[f"f{i}"] = sha256(source)

    assert_all_running(cluster)
    # The full node kept its reserve; every block still got three copies (handoff).
    assert disks[full].free() > RESERVE - 4 * MiB

    def copies() -> int:
        return sum(int(line.split()[3]) for line in node_lines(cluster.status()).values())

    wait_for(lambda: copies() == 3 * files, f"{3 * files} block copies")
    # The metadata works: the full node's Raft log and database still have room.
    change_the_namespace(mounted, written, dirs=0)
    assert_all_running(cluster)
    assert_reads_back(mount_factory("second").path, written)


def test_all_disks_full_gives_enospc_promptly_and_the_metadata_goes_on(
    cluster: Cluster, filled: Filled, mount_factory: Callable[..., Mount]
) -> None:
    assert "No space left on device" in filled.error
    assert filled.elapsed < PROMPT, f"ENOSPC took {filled.elapsed:.1f}s"
    assert len(filled.written) >= 2, "the disks filled before any file fit"
    # df counts what blocks may still use: every node has less than a block left above its
    # reserve, and each byte stored takes three copies.
    fs = os.statvfs(filled.mounted)
    assert fs.f_bavail * fs.f_frsize < 2 * FILE_SIZE
    change_the_namespace(filled.mounted, filled.written, dirs=100)
    assert_all_running(cluster)
    status = cluster.status()  # says so, in words, for each node
    assert all(f"problem: node {n.name}'s disk is" in status for n in cluster.nodes), status
    # Everything written and closed before the disks filled reads back, from a fresh mount.
    assert_reads_back(mount_factory("second").path, filled.written)


def test_deleting_files_makes_room_again(cluster: Cluster, filled: Filled, tmp_path: Path) -> None:
    assert "No space left on device" in filled.error
    names = [str(filled.mounted / name) for name in filled.written]
    subprocess.run(["rm", "-r", *names], check=True)
    source = random_file(tmp_path / "source", FILE_SIZE)
    again = filled.mounted / "again"

    def fits() -> bool:
        copy = subprocess.run(["cp", str(source), str(again)], capture_output=True, text=True)
        assert copy.returncode == 0 or "No space left" in copy.stderr, copy.stderr
        return copy.returncode == 0

    # The collector deletes the removed files' blocks once their 1 s grace period is over.
    wait_for(fits, "room for a new file after deleting the others", timeout=60)
    assert sha256(again) == sha256(source)
    assert_all_running(cluster)
    status = cluster.status()
    assert re.search(r"garbage: \d+ blocks \(.*\) waiting, [1-9]\d* collected", status), status
