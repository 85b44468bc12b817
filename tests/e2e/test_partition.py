"""A meta leader cut off in its own network namespace: the minority commits nothing, the
majority elects a leader and goes on, and after healing the group converges without the old
leader disrupting it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import netns
from tests.e2e.conftest import Cluster, Mount, NodeProcess, wait_for

pytestmark = pytest.mark.fuse


# Run on a host: ask one node, through a ringfs client, for its view of the meta group, and
# (if a name is given) try to commit a directory. Prints JSON: {"status": ..., "committed": ...}.
PROBE = """
import json, sys, trio
from ringfs.fs.cluster import Cluster, ClusterConfig
from ringfs.node.rpc.client import ClientConfig
from ringfs.node.meta.commands import Mkdir
from ringfs.node.errors import NodeError, Unavailable

async def main(address, secret, name):
    config = ClusterConfig((address,), ClientConfig(secret, connect_timeout=1.0,
                           request_timeout=2.0), meta_deadline=4.0)
    async with trio.open_nursery() as nursery:
        cluster = await Cluster.create(config, nursery=nursery)
        status = await cluster.pool.call(address, "meta.status", [], 2.0)
        committed = None
        if name:
            try:
                await cluster.meta_apply(Mkdir(1, name.encode(), 0o755, 0, 0, 0))
                committed = True
            except (NodeError, Unavailable):
                committed = False
        print(json.dumps({"status": status, "committed": committed}))
        nursery.cancel_scope.cancel()

trio.run(main, sys.argv[1], open(sys.argv[2], "rb").read().strip(), sys.argv[3])
"""


@pytest.fixture
def cluster(hosted_cluster: Cluster) -> Cluster:
    """The nodes on hosts of their own (so mounts use these)."""
    return hosted_cluster


def probe(host: netns.Host, node: NodeProcess, secret: Path, name: str = "") -> dict[str, Any]:
    result = subprocess.run(
        [*host.prefix, sys.executable, "-c", PROBE, node.address, str(secret), name],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def test_a_cut_off_leader_commits_nothing_and_the_group_converges(
    cluster: Cluster, hosts: list[netns.Host], mount_factory: Callable[..., Mount]
) -> None:
    mounted = mount_factory().path
    (mounted / "before").write_text("before")
    views = [probe(h, n, cluster.secret_file) for n, h in zip(cluster.nodes, hosts, strict=True)]
    leader = next(v["status"]["node_id"] for v in views if v["status"]["role"] == "leader")
    index = [n.name for n in cluster.nodes].index(leader)
    isolated_host, isolated = hosts[index], cluster.nodes[index]

    isolated_host.cut()
    # The majority elects a new leader and the mount goes on.
    (mounted / "during").write_text("during")
    assert (mounted / "during").read_text() == "during"
    # The cut-off node commits nothing, whatever it believes about itself.
    minority = probe(isolated_host, isolated, cluster.secret_file, "minority")
    assert minority["committed"] is False
    stale_commit = minority["status"]["commit_index"]

    isolated_host.heal()

    def converged() -> bool:
        views = [
            probe(h, n, cluster.secret_file) for n, h in zip(cluster.nodes, hosts, strict=True)
        ]
        applied = {v["status"]["applied_index"] for v in views}
        leaders = {v["status"]["leader"] for v in views}
        return len(applied) == 1 and len(leaders) == 1 and None not in leaders

    wait_for(converged, "the group to converge after healing")
    healed = probe(isolated_host, isolated, cluster.secret_file)
    assert healed["status"]["commit_index"] > stale_commit
    # The returning node did not take over: pre-vote kept the majority's leader.
    assert healed["status"]["leader"] != leader
    assert sorted(p.name for p in mounted.iterdir()) == ["before", "during"]
