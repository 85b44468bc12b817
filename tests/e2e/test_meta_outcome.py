"""An error means it did not happen: a metadata change reports success, or never takes effect.

A change that reached a leader which then lost its quorum before committing it is in doubt: a
later leader may still commit it. The mount retries it under the same session id until the
outcome is known, past the deadline at which a change that no leader took fails with EIO.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.e2e.conftest import Cluster, Mount, NodeProcess, wait_for
from tests.e2e.test_meta_failover import leader_of

pytestmark = pytest.mark.fuse

# The mount's --meta-deadline: short, so that giving up would show within the test.
DEADLINE = 2.0


def _mount(mount_factory: Callable[..., Mount]) -> Mount:
    return mount_factory(args=("--meta-deadline", str(DEADLINE)))


def _others(cluster: Cluster, name: str) -> list[NodeProcess]:
    return [node for node in cluster.nodes if node.name != name]


def test_a_change_a_leader_took_waits_for_its_outcome(
    cluster: Cluster, mount_factory: Callable[..., Mount]
) -> None:
    mount = _mount(mount_factory)
    (mount.path / "warm").mkdir()  # the mount knows the leader and holds a connection to it
    followers = _others(cluster, leader_of(cluster))
    for node in followers:
        assert node.process is not None
        node.process.send_signal(signal.SIGSTOP)
    # The leader takes the mkdir, cannot commit it, and steps down (check-quorum).
    with subprocess.Popen(
        ["mkdir", str(mount.path / "late")], stderr=subprocess.PIPE, text=True
    ) as mkdir:
        try:
            time.sleep(3 * DEADLINE)
            assert mkdir.poll() is None, f"mkdir gave up: {mkdir.communicate()[1]}"
        finally:
            for node in followers:
                assert node.process is not None
                node.process.send_signal(signal.SIGCONT)
        _, errors = mkdir.communicate(timeout=60)
    assert mkdir.returncode == 0, errors
    assert "late" in os.listdir(mount.path)
    assert "outcome unknown, retrying" in mount.log()


def test_a_change_no_leader_took_fails_and_never_happens(
    cluster: Cluster, mount_factory: Callable[..., Mount]
) -> None:
    mount = _mount(mount_factory)
    (mount.path / "warm").mkdir()
    leader = cluster.node(leader_of(cluster))
    victims = [leader, _others(cluster, leader.name)[0]]
    for node in victims:
        cluster.kill(node)
    time.sleep(1)  # the mount sees the connections close: nothing more goes out on them
    started = time.monotonic()
    done = subprocess.run(["mkdir", str(mount.path / "never")], capture_output=True, text=True)
    assert done.returncode != 0
    assert "Input/output error" in done.stderr
    assert time.monotonic() - started < 10 * DEADLINE
    cluster.start(*victims)
    leader_of(cluster)
    (mount.path / "after").mkdir()
    wait_for(lambda: "after" in os.listdir(mount.path), "the cluster to take changes again")
    assert "never" not in os.listdir(mount.path)
