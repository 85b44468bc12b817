"""A node cut off (its own network namespace) while a drain is agreed: the majority side makes
the change and the mount goes on, the cut-off side refuses a change in one line, and once the
network heals the cut-off node goes by the new map and the drained node leaves."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from ringfs.node.cluster.map import ClusterMap, parse_members
from tests.e2e import netns
from tests.e2e.conftest import Cluster, Mount, NodeProcess, ringfs, ringfs_argv, wait_for

pytestmark = pytest.mark.fuse

HOSTS = 5


@pytest.fixture
def cluster(hosted_cluster: Cluster) -> Cluster:
    """The nodes on hosts of their own (so mounts use these)."""
    return hosted_cluster


def epoch_and_state(node: NodeProcess, of: str) -> tuple[int, str]:
    """The epoch of the map `node` keeps, and the state it gives node `of`."""
    cmap = ClusterMap.load(node.data / "cluster.json")
    return cmap.epoch, cmap.node(of).state


def test_a_node_cut_off_during_a_drain_learns_the_new_map_when_it_returns(
    cluster: Cluster, hosts: list[netns.Host], mount_factory: Callable[..., Mount]
) -> None:
    mounted = mount_factory().path
    files = {f"f{i}": bytes([i]) * 300_000 for i in range(10)}
    for name, data in files.items():
        (mounted / name).write_bytes(data)
    meta = {n.node_id for n in ClusterMap(1, parse_members(cluster.spec)).meta_nodes()}
    cut_name, drained_name = [n.name for n in cluster.nodes if n.name not in meta]
    index = [n.name for n in cluster.nodes].index(cut_name)
    cut_host, cut_node = hosts[index], cluster.nodes[index]
    drained = cluster.node(drained_name)
    first = 2  # founded, then the mount's key issued
    wait_for(lambda: epoch_and_state(cut_node, drained_name) == (first, "active"), "the map")

    cut_host.cut()
    others = ",".join(n.address for n in cluster.nodes if n is not cut_node)
    access = ["--cluster", others, "--secret-file", str(cluster.secret_file)]
    result = ringfs("drain", drained_name, *access)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"cluster map epoch {first + 1}: {drained_name} is draining\n"
    (mounted / "during").write_bytes(b"written while a node was cut off")
    # The cut-off side has no majority of the register: a change there is refused cleanly.
    refused = subprocess.run(
        [*cut_host.prefix, *ringfs_argv("weight", cut_name, "2", "--cluster", cut_node.address,
                                        "--secret-file", str(cluster.secret_file))],
        capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert refused.returncode == 1, refused.stderr
    assert "Traceback" not in refused.stderr
    assert "EAGAIN" in refused.stderr.strip().splitlines()[-1], refused.stderr
    assert epoch_and_state(cut_node, drained_name) == (first, "active")

    cut_host.heal()
    wait_for(
        lambda: epoch_and_state(cut_node, drained_name)[0] > first,
        "the cut-off node to follow",
        60,
    )
    process = drained.process
    assert process is not None
    wait_for(lambda: process.poll() is not None, f"{drained_name} to leave", 120)
    assert process.returncode == 0  # it left, it did not fail
    staying = [n for n in cluster.nodes if n is not drained]
    wait_for(
        lambda: {epoch_and_state(n, drained_name)[1] for n in staying} == {"removed"},
        "every node to go by the map without it",
    )
    for name, data in files.items():
        assert (mounted / name).read_bytes() == data
    assert (mounted / "during").read_bytes() == b"written while a node was cut off"
