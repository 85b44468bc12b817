"""The cluster map register on in-process nodes: the nodes agree on one map at start, a node
started with other members stops, and proposals from several places apply one after another."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import trio

from ringfs.node import agreement, daemon, lifecycle
from ringfs.node.cluster.map import ClusterMap, MapView, parse_members
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


async def wait_kept(nodes: LocalNodes, cmap: ClusterMap) -> None:
    """Until every node goes by `cmap`: it keeps the map it goes by in its data directory."""
    with trio.fail_after(20):
        while any(  # noqa: ASYNC110
            ClusterMap.load(nodes.root / name / "cluster.json") != cmap for name in nodes.configs
        ):
            await trio.sleep(0.05)


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
    await wait_kept(nodes, founded)
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
    # Until it learns the agreed map, the stranger may campaign; the members drop its votes.
    expected_logs.append("from 'x', not another member of the group")
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
    view = MapView(nodes.map)

    def count(value: Any) -> tuple[Any, Any]:  # a change of the map: the next epoch
        after = value["epoch"] + 1
        return {**value, "epoch": after}, after

    results: list[int] = []
    pool = NodePool(ClientConfig(SECRET), nursery)

    def register(name: str) -> NodeRegister:
        (tmp_path / name).mkdir()
        return NodeRegister(name, RegisterStore(tmp_path / name), pool, view)

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


async def test_the_nodes_follow_the_registers_map(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agreement, "FOLLOW_INTERVAL", 0.2)
    nodes = await start_nodes(tmp_path, nursery)
    await wait_agreed(nodes)
    (tmp_path / "operator").mkdir()
    pool = NodePool(ClientConfig(SECRET), nursery)
    operator = NodeRegister(
        "operator", RegisterStore(tmp_path / "operator"), pool, MapView(nodes.map)
    )

    def heavier_n3(value: Any) -> tuple[Any, Any]:
        cmap = ClusterMap.from_wire(value)
        nodes_ = tuple(
            dataclasses.replace(n, weight=2.0) if n.node_id == "n3" else n for n in cmap.nodes
        )
        return dataclasses.replace(cmap, nodes=nodes_, epoch=cmap.epoch + 1).to_wire(), None

    _, changed = await operator.propose(heavier_n3, trio.current_time() + 20)
    expected = ClusterMap.from_wire(changed)
    assert expected.epoch == 2
    client = await nodes.client()
    await wait_kept(nodes, expected)
    for node in client.map.nodes:
        told = await client.pool.call(node.address, "map.get", [])
        assert ClusterMap.from_wire(told) == expected


async def test_a_change_is_told_to_every_node_at_once(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node that made it tells the others, which go by it without waiting for their next
    read of the register."""
    monkeypatch.setattr(agreement, "FOLLOW_INTERVAL", math.inf)
    monkeypatch.setattr(lifecycle, "INTERVAL", math.inf)  # no other message names an epoch
    nodes = await start_nodes(tmp_path, nursery)
    await wait_agreed(nodes)
    pool = NodePool(ClientConfig(SECRET), nursery)
    n1 = nodes.configs["n1"]
    wire = await pool.call(f"{n1.host}:{n1.port}", "map.change", ["weight", ["n3", 2.0]])
    changed = ClusterMap.from_wire(wire)
    assert changed.node("n3").weight == 2.0
    await wait_kept(nodes, changed)


async def test_nodes_started_with_new_addresses_agree_on_them(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    nodes = await start_nodes(tmp_path, nursery)
    before = ClusterMap.from_wire((await wait_agreed(nodes))["n1"])
    for name in list(nodes.configs):
        await nodes.stop(name)
    ports = free_ports(3)
    members = parse_members(",".join(f"n{i + 1}=127.0.0.1:{p}" for i, p in enumerate(ports)))
    for name, config in list(nodes.configs.items()):
        port = ports[int(name[1:]) - 1]
        nodes.configs[name] = dataclasses.replace(config, port=port, members=members)
        await nodes.start(name)
    moved = dataclasses.replace(before, nodes=members, epoch=before.epoch + 1)
    await wait_kept(nodes, moved)
    client = await nodes.client()
    assert client.map == moved  # what map.get tells a mount
