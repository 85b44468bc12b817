"""Faults under load: a storage node killed with SIGKILL, or hung with SIGSTOP, while a large
copy runs; a mount stopped with files open."""

from __future__ import annotations

import filecmp
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, Mount, NodeProcess
from tests.e2e.test_tools import MiB, random_file

pytestmark = pytest.mark.fuse


def node_lines(text: str) -> dict[str, str]:
    """node -> its line in the node table of `ringfs status` (before the meta group's; the
    `total` line after the nodes' is not one)."""
    lines = text.split("\n\n", 1)[0].splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("NODE ")) + 1 :]
    return {line.split()[0]: line for line in table if not line.startswith("total ")}


def test_copy_survives_sigkill_of_a_storage_node(
    cluster: Cluster, mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    mounted = mount_factory().path
    # Not the meta leader (killing that one is the metadata failover test's business).
    leader = re.search(r"meta group: leader (n\d+)", cluster.status())
    victim = next(node for node in cluster.nodes if not leader or node.name != leader.group(1))
    source = random_file(tmp_path / "source.bin", 200 * MiB)
    target = mounted / "copy.bin"

    copy = subprocess.Popen(["cp", str(source), str(target)])
    try:
        # Kill the node once the copy is well under way.
        deadline = time.monotonic() + 60
        while (not target.exists() or target.stat().st_size < 40 * MiB) and copy.poll() is None:
            assert time.monotonic() < deadline, "copy made no progress"
            time.sleep(0.05)
        assert copy.poll() is None, "the copy finished before the node could be killed"
        cluster.kill(victim)
        assert copy.wait(timeout=300) == 0
    finally:
        if copy.poll() is None:
            copy.kill()
            copy.wait()

    assert filecmp.cmp(source, target, shallow=False)
    status = cluster.status()
    assert "unreachable" in node_lines(status)[victim.name]
    assert f"problem: node {victim.name} ({victim.address}) does not answer" in status, status
    document = json.loads(cluster.status("--json"))
    assert f"node {victim.name} ({victim.address}) does not answer" in document["problems"]
    stats = {node["id"]: node["stats"] for node in document["nodes"]}
    assert stats[victim.name] is None
    assert all(stats[n.name]["blocks"] > 0 for n in cluster.nodes if n is not victim)

    cluster.start(victim)
    lines = node_lines(cluster.status())
    assert "unreachable" not in lines[victim.name]
    assert " active " in lines[victim.name]
    # Still readable with every node back, through a second mount (no cached pages).
    second = mount_factory("second").path
    assert filecmp.cmp(source, second / "copy.bin", shallow=False)


def not_the_leader(cluster: Cluster) -> NodeProcess:
    leader = re.search(r"meta group: leader (n\d+)", cluster.status())
    return next(node for node in cluster.nodes if not leader or node.name != leader.group(1))


def test_a_hung_node_does_not_stall_writes(
    cluster: Cluster, mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    mounted = mount_factory().path
    source = random_file(tmp_path / "source.bin", 128 * MiB)  # many more blocks than slots
    victim = not_the_leader(cluster)
    assert victim.process is not None
    victim.process.send_signal(signal.SIGSTOP)  # hung, not dead: its sockets stay open
    try:
        started = time.monotonic()
        subprocess.run(["cp", str(source), str(mounted / "copy.bin")], check=True, timeout=120)
        took = time.monotonic() - started
    finally:
        victim.process.send_signal(signal.SIGCONT)
    # Each block waits a moment for the hung replica, not the 15 s request timeout.
    assert took < 15, f"the copy took {took:.1f}s with one node hung"
    assert filecmp.cmp(source, mounted / "copy.bin", shallow=False)


def test_a_hung_meta_leader_stalls_writes_only_briefly(
    cluster: Cluster, mount_factory: Callable[..., Mount]
) -> None:
    mounted = mount_factory().path
    (mounted / "warm").write_bytes(b"the mount knows the leader")
    leader = re.search(r"meta group: leader (n\d+)", cluster.status())
    assert leader is not None
    victim = cluster.node(leader.group(1))
    assert victim.process is not None
    data = os.urandom(5 * MiB)
    victim.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        (mounted / "f").write_bytes(data)  # a lookup, a create, two blocks, a commit
        took = time.monotonic() - started
    finally:
        victim.process.send_signal(signal.SIGCONT)
    # One metadata attempt on the hung leader, then the new one: not the 15 s request timeout.
    assert took < 12, f"the write took {took:.1f}s with the meta leader hung"
    assert (mounted / "f").read_bytes() == data


def test_small_files_close_with_either_meta_follower_hung(
    cluster: Cluster, mount_factory: Callable[..., Mount]
) -> None:
    """New metadata entries go at once to one follower only (a commit needs one): whichever of
    the two hangs, closes go on and what they stored is there."""
    mounted = mount_factory().path
    (mounted / "warm").write_bytes(b"the mount knows the leader")
    leader = re.search(r"meta group: leader (n\d+)", cluster.status())
    assert leader is not None
    written: dict[str, bytes] = {}
    for victim in (node for node in cluster.nodes if node.name != leader.group(1)):
        assert victim.process is not None
        victim.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            for i in range(50):
                name, data = f"{victim.name}-{i}", os.urandom(4096 + i)
                (mounted / name).write_bytes(data)
                written[name] = data
            took = time.monotonic() - started
        finally:
            victim.process.send_signal(signal.SIGCONT)
        # Not a stall until the metadata deadline (20 s): the other follower commits.
        assert took < 15, f"50 small files took {took:.1f}s with {victim.name} hung"
    again = mount_factory("again").path
    assert {name: (again / name).read_bytes() for name in written} == written


def test_stopping_a_mount_stores_what_open_files_hold(
    cluster: Cluster, mount_factory: Callable[..., Mount]
) -> None:
    mount = mount_factory()
    data = os.urandom(3 * MiB + 5)  # part of one chunk: nothing uploads it before a flush
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN, str(mount.path / "held"), str(len(data))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as writer:
        try:
            assert writer.stdin is not None
            assert writer.stdout is not None
            writer.stdin.write(data)
            writer.stdin.close()
            assert writer.stdout.readline() == b"written\n"
            mount.process.send_signal(signal.SIGTERM)  # the file is still open, never flushed
            mount.process.wait(timeout=60)
        finally:
            writer.kill()
            mount.abort()
    again = mount_factory("again").path
    assert (again / "held").read_bytes() == data


# Writes what comes on stdin to argv[1] and keeps the file open (no close, no fsync).
HOLD_OPEN = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
data = sys.stdin.buffer.read(int(sys.argv[2]))
view = memoryview(data)
while view:
    view = view[os.write(fd, view):]
print("written", flush=True)
time.sleep(600)
"""
