"""Repair with real node processes and a real mount: a node whose data directory was wiped is
refilled with the same blocks, byte for byte, and `ringfs repair --wait` says when; then another
node is killed and every file still reads back."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.e2e.conftest import Cluster, Mount, ringfs_argv

FILES = 12


def block_files(node_data: Path) -> dict[str, bytes]:
    """Every block file of a node's store, by name."""
    root = node_data / "store" / "blocks"
    return {path.name: path.read_bytes() for path in root.glob("*/*/*") if path.is_file()}


def repair_wait(cluster: Cluster) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ringfs_argv(
            "repair", "--wait", "--timeout", "60",
            "--cluster", cluster.seeds, "--secret-file", str(cluster.secret_file),
        ),
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip


def test_a_wiped_node_is_refilled_and_the_files_survive_losing_another(
    cluster: Cluster, mount_factory: Callable[..., Mount], expected_logs: list[str]
) -> None:
    expected_logs.append("unavailable")  # the mount meets the stopped nodes
    mount = mount_factory()
    digests = {}
    for i in range(FILES):
        data = os.urandom(100_000 + 300_000 * i)  # past what the metadata keeps inline
        (mount.path / f"f{i}").write_bytes(data)
        digests[f"f{i}"] = hashlib.sha256(data).hexdigest()
    assert repair_wait(cluster).returncode == 0  # the trailing copies are all there
    first, wiped, killed = cluster.nodes
    before = block_files(first.data)
    assert len(before) >= FILES
    assert block_files(wiped.data) == before  # R = 3 on 3 nodes: every node holds every block

    cluster.stop(wiped)
    shutil.rmtree(wiped.data / "store")
    cluster.start(wiped)
    done = repair_wait(cluster)
    assert done.returncode == 0, done.stderr
    assert "3/3 nodes whole" in done.stderr
    assert block_files(wiped.data) == before
    assert f"repair {wiped.name}: " in cluster.status()

    cluster.kill(killed)
    fresh = mount_factory("fresh")  # nothing cached: every block comes from the nodes
    for name, digest in digests.items():
        assert hashlib.sha256((fresh.path / name).read_bytes()).hexdigest() == digest
