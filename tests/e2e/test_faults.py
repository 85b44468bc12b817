"""Faults under load: a storage node killed with SIGKILL while a large copy runs."""

from __future__ import annotations

import filecmp
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, Mount
from tests.e2e.test_tools import MiB, random_file

pytestmark = pytest.mark.fuse


def node_lines(text: str) -> dict[str, str]:
    """node -> its line in the node table of `ringfs status` (before the meta group's)."""
    table = text.split("\n\n", 1)[0].splitlines()[2:]
    return {line.split()[0]: line for line in table}


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
    lines = node_lines(cluster.status())
    assert "unreachable" in lines[victim.name]

    cluster.start(victim)
    lines = node_lines(cluster.status())
    assert "unreachable" not in lines[victim.name]
    assert " up " in lines[victim.name]
    # Still readable with every node back, through a second mount (no cached pages).
    second = mount_factory("second").path
    assert filecmp.cmp(source, second / "copy.bin", shallow=False)
