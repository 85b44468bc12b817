"""The metadata survives losing its leader: SIGKILL the meta leader under a namespace workload.

Files are created, written, renamed and removed through the mount while the leader is
killed. The mount stalls for an election and goes on; every operation that returned success
is reflected afterwards; the killed node restarts and catches up.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, Mount, wait_for

pytestmark = pytest.mark.fuse

#: the nodes' `--snapshot-every`: small, so a node away for a while must catch up by one
SNAPSHOT_EVERY = 50


def meta_members(text: str) -> dict[str, tuple[str, int, int]]:
    """member -> (role, log index, applied) from the meta group table of `ringfs status`."""
    members = {}
    table = text.split("meta group:", 1)[1].splitlines()[2:]
    for line in table:
        fields = line.split()
        if len(fields) >= 6:
            members[fields[0]] = (fields[1], int(fields[2]), int(fields[3]))
    return members


def leader_of(cluster: Cluster) -> str:
    found: list[str] = []

    def elected() -> bool:
        match = re.search(r"meta group: leader (n\d+)", cluster.status())
        found[:] = [match.group(1)] if match else []
        return bool(found)

    wait_for(elected, "a meta leader")
    return found[0]


class Workload:
    """Namespace operations in a thread; remembers which ones returned success."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.created: dict[str, bytes] = {}
        self.renamed: dict[str, str] = {}
        self.removed: set[str] = set()
        self.slowest = 0.0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> Workload:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _timed(self, action: Callable[[], None]) -> bool:
        started = time.monotonic()
        try:
            action()
        except OSError as exc:
            self.errors.append(f"{exc!r}")
            return False
        self.slowest = max(self.slowest, time.monotonic() - started)
        return True

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            name = f"f{i:05d}"
            data = os.urandom(100 + i % 3000)
            if self._timed(lambda: (self.root / name).write_bytes(data)):  # noqa: B023
                self.created[name] = data
            if i % 3 == 1 and self._timed(
                lambda: os.rename(self.root / name, self.root / f"r{name}")  # noqa: B023
            ):
                self.renamed[name] = f"r{name}"
            if (
                i % 5 == 2
                and name not in self.renamed
                and self._timed(
                    lambda: os.unlink(self.root / name)  # noqa: B023
                )
            ):
                self.removed.add(name)
            i += 1

    def verify(self, root: Path) -> None:
        """Everything acknowledged, as seen under `root` (this mount or another)."""
        names = set(os.listdir(root))
        for name, data in self.created.items():
            if name in self.removed:
                assert name not in names, f"{name} was removed but is back"
                continue
            final = self.renamed.get(name, name)
            assert final in names, f"{final} was acknowledged but is missing"
            assert (root / final).read_bytes() == data, f"{final} has the wrong content"


def leader_log_index(cluster: Cluster) -> int:
    """The last index in the meta leader's log (0 while there is none)."""
    members = meta_members(cluster.status())
    return max((m[1] for m in members.values() if m[0] == "leader"), default=0)


@pytest.fixture
def cluster(cluster: Cluster) -> Cluster:
    """Compact the Raft log often, so the restarted node must catch up by snapshot."""
    cluster.node_args = ("--snapshot-every", str(SNAPSHOT_EVERY))
    for node in cluster.nodes:
        cluster.stop(node)
    cluster.start(*cluster.nodes)
    return cluster


def test_killing_the_meta_leader_loses_nothing_acknowledged(
    cluster: Cluster, mount_factory: Callable[..., Mount]
) -> None:
    mounted = mount_factory().path
    (mounted / "work").mkdir()
    victim = cluster.node(leader_of(cluster))
    with Workload(mounted / "work") as workload:
        wait_for(lambda: len(workload.created) >= 40, "the workload to get going")
        cluster.kill(victim)
        before = len(workload.created)
        wait_for(lambda: len(workload.created) >= before + 40, "operations after the kill")
        # The victim's log ends near where the new leader's began; two snapshot intervals
        # past that, the leader has compacted away what the victim lacks.
        elected_at = leader_log_index(cluster)
        wait_for(
            lambda: leader_log_index(cluster) >= elected_at + 2 * SNAPSHOT_EVERY + 20,
            "the new leader's log to pass two snapshots",
        )
    assert workload.errors == [], "operations failed instead of waiting for the election"
    print(f"slowest operation across the failover: {workload.slowest:.2f}s")
    workload.verify(mounted / "work")
    assert leader_of(cluster) != victim.name

    # The killed node restarts and catches up with the leader's log.
    cluster.start(victim)

    def caught_up() -> bool:
        members = meta_members(cluster.status())
        leader = next((m for m in members.values() if m[0] == "leader"), None)
        mine = members.get(victim.name)
        return leader is not None and mine is not None and mine[2] >= leader[2]

    wait_for(caught_up, f"{victim.name} to catch up")
    # It was away for more than a snapshot's worth of entries: it caught up from one.
    assert "installed a snapshot" in cluster.log(victim)
    # Through a fresh mount: everything acknowledged is there.
    workload.verify(mount_factory("second").path / "work")
