"""A meta-group member that lost its disk comes back, with real node processes.

The nodes compact their Raft log often (`--snapshot-every 20`). A follower that holds the whole
log is stopped, its data directory wiped, and it is started again, empty, while the leader stays
the same and nothing else happens: the leader, which had compacted its log and still counts
what the follower acknowledged, must recognise that it restarted empty and bring it back with a
snapshot, until its log index reaches the leader's. Then the leader is stopped: the group
elects another leader with the member that came back, and goes on committing.
"""

from __future__ import annotations

import shutil

import trio

from ringfs.fs.cluster import Cluster as Client
from ringfs.fs.cluster import ClusterConfig
from ringfs.fs.mount import wait_for_filesystem
from ringfs.node.meta.commands import ROOT_INO, Mkdir
from ringfs.node.rpc.client import ClientConfig
from ringfs.tools.local import read_secret
from tests.e2e.conftest import Cluster, wait_for
from tests.e2e.test_meta_failover import leader_of, meta_members

SNAPSHOT_EVERY = 20


def make_directories(cluster: Cluster, prefix: str, count: int) -> None:
    """Create `count` directories through the metadata service, as a mount would."""

    async def run() -> None:
        config = ClusterConfig(
            tuple(cluster.seeds.split(",")), ClientConfig(read_secret(cluster.secret_file))
        )
        async with trio.open_nursery() as nursery:
            client = await Client.create(config, nursery=nursery)
            try:
                await wait_for_filesystem(client)
                for i in range(count):
                    name = f"{prefix}{i:04d}".encode()
                    await client.meta_apply(Mkdir(ROOT_INO, name, 0o755, 0, 0, 0))
            finally:
                await client.aclose()

    trio.run(run)


def test_a_member_that_lost_its_disk_catches_up_and_votes_again(
    cluster: Cluster, expected_logs: list[str]
) -> None:
    expected_logs.append("unavailable")  # the client meets the stopped members
    cluster.node_args = ("--snapshot-every", str(SNAPSHOT_EVERY))
    for node in cluster.nodes:
        cluster.stop(node)
    cluster.start(*cluster.nodes)
    leader = cluster.node(leader_of(cluster))
    make_directories(cluster, "before", 3 * SNAPSHOT_EVERY + 5)  # a snapshot, then entries
    lost = next(node for node in cluster.nodes if node is not leader)

    def caught_up() -> bool:
        members = meta_members(cluster.status())
        theirs, mine = members.get(leader.name), members.get(lost.name)
        return theirs is not None and mine is not None and mine[1:] >= theirs[1:] > (0, 0)

    wait_for(caught_up, f"{lost.name} to hold the whole log")
    cluster.stop(lost)
    shutil.rmtree(lost.data)
    cluster.start(lost)
    wait_for(caught_up, f"{lost.name} to catch up with {leader.name} again")
    assert leader_of(cluster) == leader.name  # the same leader all along
    assert "restarted without entries it had acknowledged" in cluster.log(leader)
    assert "installed a snapshot" in cluster.log(lost)

    # Its vote counts again: without the leader, it and the third member elect another.
    cluster.stop(leader)
    make_directories(cluster, "after", 5)
    new_leader = leader_of(cluster)
    assert new_leader != leader.name
    members = meta_members(cluster.status())
    assert members[lost.name][2] >= members[new_leader][2] - 5
