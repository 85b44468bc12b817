"""Where a client looks for a block: the active replicas first, a replica still joining after
them, then the rest of the ring and the nodes being drained."""

from __future__ import annotations

import os

import trio

from ringfs.fs.cluster import Cluster, ClusterConfig
from ringfs.node.cluster.changes import change_map
from ringfs.node.cluster.map import ClusterMap, parse_members
from ringfs.node.rpc.client import ClientConfig, NodePool

MAP = ClusterMap(1, parse_members("a=h:1,b=h:2,c=h:3,d=h:4,e=h:5"), 3, "c0ffee", ("a", "b", "c"))


async def test_a_joining_replica_is_read_after_the_active_ones(nursery: trio.Nursery) -> None:
    joined = change_map(change_map(MAP, "add", ["f", "h", 6, 1.0, ""]), "drain", ["e"])
    config = ClusterConfig(("h:1",), ClientConfig(b"secret"))
    client = Cluster(config, NodePool(config.client, nursery), joined, nursery)
    seen = 0
    for _ in range(300):
        block = os.urandom(16)
        order = client.read_order(block)
        placement = [n.address for n in joined.placement(block)]
        active = [a for a in placement if a != "h:6"]
        assert set(order[: len(active)]) == set(active)
        if "h:6" in placement:
            seen += 1
            assert order[len(active)] == "h:6"
        assert order[-1] == "h:5"  # the drained node, last
        assert len(order) == len(set(order)) == 6
    assert seen > 0
