"""The cluster map register on in-process nodes: the nodes agree on one map at start, a node
started with other members stops, and proposals from several places apply one after another."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from ringfs.node import daemon
from ringfs.node.cluster.map import ClusterMap, parse_members
from ringfs.node.errors import ConfigError, Unavailable
from ringfs.node.register import NodeRegister, RegisterStore
from ringfs.node.rpc.client import ClientConfig, NodePool
from ringfs.node.rpc.protocol import ClusterIdentity
from tests.cluster.conftest import SECRET, LocalNodes, start_nodes
from tests.conftest import free_ports


def agreed(nodes: LocalNodes, name: str) -> Any:
    """What the node's acceptor last accepted (None before it accepted anything)."""
    return RegisterStore(nodes.root / name).state.value.value


async def wait_agreed(nodes: LocalNodes) -> dict[str, Any]:
    with trio.fail_after(20):
        while any(agreed(nodes, name) is None for name in nodes.configs):  # noqa: ASYNC110
            await trio.sleep(0.05)
    values = {name: agreed(nodes, name) for name in nodes.configs}
    return values


async def test_the_nodes_agree_on_one_map(
    tmp_path: Path, nursery: trio.Nursery, expected_logs: list[str]
) -> None:
    expected_logs += ["belongs to cluster", "a client of cluster another"]  # both ends warn
    nodes = await start_nodes(tmp_path, nursery)
    values = await wait_agreed(nodes)
    [cluster_id] = {value["cluster"] for value in values.values()}
    founded = ClusterMap(1, nodes.map.nodes, 3, cluster_id, ("n2", "n1", "n3"))
    assert list(values.values()) == [founded.to_wire()] * 3

    # Each node keeps the id, names it in map.get, and refuses clients of other clusters.
    def kept(name: str) -> ClusterMap:
        return ClusterMap.load(nodes.root / name / "cluster.json")

    with trio.fail_after(10):
        while any(kept(name) != founded for name in nodes.configs):  # noqa: ASYNC110
            await trio.sleep(0.05)
    client = await nodes.client()
    assert client.map == founded
    stranger = NodePool(ClientConfig(SECRET, identity=ClusterIdentity("another")), nursery)
    with pytest.raises(Unavailable, match=f"the node belongs to cluster {cluster_id}, not another"):
        await stranger.call(client.map.nodes[0].address, "node.info", [])


async def test_a_node_started_with_other_members_stops(
    tmp_path: Path, nursery: trio.Nursery, expected_logs: list[str]
) -> None:
    nodes = await start_nodes(tmp_path, nursery)
    await wait_agreed(nodes)
    (port,) = free_ports(1)
    known = {name: config.port for name, config in nodes.configs.items()}
    members = parse_members(
        f"n1=127.0.0.1:{known['n1']},n2=127.0.0.1:{known['n2']},x=127.0.0.1:{port}"
    )
    stranger = daemon.NodeConfig(
        node_id="x", data_dir=tmp_path / "x", secret=SECRET, port=port, members=members
    )
    with pytest.raises(BaseExceptionGroup) as stopped, trio.fail_after(20):
        async with trio.open_nursery() as inner:
            await inner.start(daemon.run, stranger)
    refusal = "this node was started with members n1, n2, x, but the cluster agreed on n1, n2, n3"
    assert stopped.group_contains(ConfigError, match=f"^{refusal}$", depth=None)


async def test_changes_from_several_proposers_apply_one_after_another(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    nodes = await start_nodes(tmp_path, nursery)
    before = (await wait_agreed(nodes))["n1"]
    acceptors = {name: f"127.0.0.1:{config.port}" for name, config in nodes.configs.items()}

    def count(value: Any) -> tuple[Any, Any]:  # a change of the map: the next epoch
        after = value["epoch"] + 1
        return {**value, "epoch": after}, after

    results: list[int] = []
    pool = NodePool(ClientConfig(SECRET), nursery)

    def register(name: str) -> NodeRegister:
        (tmp_path / name).mkdir()
        return NodeRegister(name, RegisterStore(tmp_path / name), pool, acceptors)

    async def proposer(name: str) -> None:
        mine = register(name)
        for _ in range(5):
            result, value = await mine.propose(count, trio.current_time() + 20)
            assert value["epoch"] >= result
            results.append(result)

    async with trio.open_nursery() as proposers:
        for number in range(4):
            proposers.start_soon(proposer, f"p{number}")
    first = before["epoch"] + 1
    assert sorted(results) == list(range(first, first + 20))  # each applied once, none lost
    read = await register("reader").read(trio.current_time() + 20)
    assert read == {**before, "epoch": first + 19}
