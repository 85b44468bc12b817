"""Members of the meta group are drained and replaced while metadata operations run through
the mount: the Raft group takes in the new member (caught up first) before the old one goes,
no operation fails, and none is lost. It is also the test of what `ringfs add-node`, `drain
--wait` and `replace --wait` print on a `ringfs up` cluster, and of `ringfs up` again after."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Up, node_states, ringfs, wait_for
from tests.e2e.test_cli import assert_one_line_error

pytestmark = pytest.mark.fuse


class MetaTraffic:
    """One thread making directories, files and renames, and listing them, as fast as the
    metadata answers, until stopped; every failure is kept."""

    def __init__(self, root: Path) -> None:
        self.root = root
        #: Each acknowledged file (its name after the rename) and its bytes.
        self.acknowledged: dict[Path, bytes] = {}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, daemon=True)

    def __enter__(self) -> MetaTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _work(self) -> None:
        number = 0
        while not self._stop.is_set():
            directory = self.root / f"d{number:05d}"
            data = os.urandom(100 + number % 3000)
            try:
                directory.mkdir()
                (directory / "new").write_bytes(data)
                (directory / "new").rename(directory / "kept")
                listed = os.listdir(directory)
            except OSError as exc:
                self.failures.append(f"{directory.name}: {exc}")
                return
            if listed != ["kept"]:
                self.failures.append(f"{directory.name} lists {listed}")
                return
            self.acknowledged[directory / "kept"] = data
            number += 1

    def wait_for_more(self, count: int) -> None:
        """Until `count` more operations were acknowledged (the traffic goes on)."""
        target = len(self.acknowledged) + count
        wait_for(
            lambda: len(self.acknowledged) >= target or bool(self.failures),
            f"{count} more metadata operations",
            60,
        )
        assert not self.failures, self.failures


def meta_group(up: Up) -> tuple[str | None, dict[str, str]]:
    """The meta group as `ringfs status` shows it: its leader, and each member's role."""
    status = ringfs("status", "--data", str(up.data))
    assert status.returncode == 0, status.stderr
    text = status.stdout.split("meta group: leader ", 1)[1]
    leader = text.split(",", 1)[0]
    roles = dict(re.findall(r"^(n\d+) +(\S+(?: a voter)?)", text, re.MULTILINE))
    return (None if leader.startswith("none") else leader), roles


def settled_group(up: Up, members: set[str]) -> str:
    """Wait until the meta group is exactly `members`, voters all, one leading; its leader."""

    def settled() -> bool:
        leader, roles = meta_group(up)
        return (
            leader is not None
            and set(roles) == members
            and all(role in ("leader", "follower") for role in roles.values())
        )

    wait_for(settled, f"the meta group to be {sorted(members)}", 60)
    leader = meta_group(up)[0]
    assert leader is not None
    return leader


@pytest.fixture
def traffic(up: Up) -> Iterator[MetaTraffic]:
    up.start("--nodes", "4")
    with MetaTraffic(up.mountpoint) as running:
        yield running


def test_drain_the_meta_leader_then_replace_a_member_under_metadata_traffic(
    up: Up, traffic: MetaTraffic
) -> None:
    group = {name for name, (_, meta) in node_states(up).items() if meta}
    assert len(group) == 3
    leader = first_leader = settled_group(up, group)
    traffic.wait_for_more(20)

    # The leader itself drains: the fourth node joins the group, then the leader leaves it.
    [spare] = {"n1", "n2", "n3", "n4"} - group
    drained = ringfs("drain", leader, "--wait", "--data", str(up.data), timeout=300)
    assert drained.returncode == 0, drained.stderr
    assert drained.stdout.endswith(f"{leader} has left the cluster\n"), drained.stdout
    assert f"blocks left on {leader}" in drained.stderr  # its progress bar
    group = group - {leader} | {spare}
    leader = settled_group(up, group)
    traffic.wait_for_more(20)

    # A follower is replaced by a node that just joined.
    added = ringfs("add-node", "--data", str(up.data))
    assert added.stdout == "node n5 joined the local cluster\n", added.stderr
    [old] = sorted(group - {leader})[:1]
    replaced = ringfs("replace", old, "n5", "--wait", "--data", str(up.data), timeout=300)
    assert replaced.returncode == 0, replaced.stderr
    assert re.fullmatch(
        rf"cluster map epoch \d+: n5 takes the place of {old}, which is draining\n"
        rf"n5 holds every block {old} held\n",
        replaced.stdout,
    ), replaced.stdout
    assert "nodes whole" in replaced.stderr  # the progress of the repair passes
    wait_for(lambda: old not in node_states(up), f"{old} to leave", 60)
    group = group - {old} | {"n5"}
    settled_group(up, group)
    traffic.wait_for_more(20)

    assert {name for name, (_, meta) in node_states(up).items() if meta} == group
    traffic.stop()
    assert not traffic.failures, traffic.failures
    for path, data in traffic.acknowledged.items():
        assert path.read_bytes() == data, path
    names = sorted(p.name for p in up.mountpoint.iterdir())
    assert names == sorted(p.parent.name for p in traffic.acknowledged) or (
        # The last directory may have been made before the traffic stopped, unacknowledged.
        names[:-1] == sorted(p.parent.name for p in traffic.acknowledged)
    )
    left = sorted({"n1", "n2", "n3", "n4", "n5"} - {first_leader, old})
    assert_one_line_error(
        ringfs("remove", left[0], "--data", str(up.data)),
        f"removing {left[0]} would leave 2 nodes for 3",
    )
    up.stop()

    up.start()  # the nodes that are left, and no other
    assert sorted(node_states(up)) == left
    some = next(iter(traffic.acknowledged))
    assert some.read_bytes() == traffic.acknowledged[some]
    up.stop()
