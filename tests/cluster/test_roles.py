"""Roles on running nodes: a client key does what a mount needs and nothing a node does.

Three in-process nodes. A key is issued as `ringfs key add` does (a map change, then every
node told of the new map); a client with it stores and reads files, and is refused (EPERM)
every method, metadata command and query that only nodes use. A key's Raft message closes its
connection and changes nothing. Revoking the key cuts off its open connection and refuses new
ones, while peers with the cluster secret carry on.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio

from ringfs.fs.cluster import Cluster, ClusterConfig
from ringfs.fs.mount import wait_for_filesystem
from ringfs.node.checksum import checksum
from ringfs.node.cluster.keys import SALT_SIZE, key_secret
from ringfs.node.errors import NodeError, Unavailable
from ringfs.node.meta import commands as cmd
from ringfs.node.rpc.client import ClientConfig, NodePool
from ringfs.tools.keys import settle
from tests.cluster.conftest import SECRET, LocalNodes, wait_until

DEADLINE = 30.0


async def change_keys(nodes: LocalNodes, admin: Cluster, *change: Any) -> None:
    """Make a map change as the key commands do, and wait until every node goes by it."""
    address = admin.map.holders()[0].address
    wire = await admin.pool.call(address, "map.change", list(change))
    assert await settle(nodes.seeds, ClientConfig(SECRET), wire["epoch"]) == set()


async def issue(nodes: LocalNodes, admin: Cluster, name: str) -> ClientConfig:
    """Issue the key `name`; how a client uses it."""
    salt = os.urandom(SALT_SIZE)
    await change_keys(nodes, admin, "issue-key", [name, salt.hex()])
    return ClientConfig(key_secret(SECRET, name, salt), name, request_timeout=5.0)


async def key_client(nodes: LocalNodes, config: ClientConfig) -> Cluster:
    return await Cluster.create(ClusterConfig(nodes.seeds, config), nursery=nodes.nursery)


async def write_and_read(client: Cluster, name: str, data: bytes) -> bytes:
    """Create a file, store its one block, commit it and read it back, as a mount does."""
    created = await client.meta_apply(cmd.Mknod(1, name.encode(), 0o100644, 0, 0, 0, 0))
    stored = await client.put_block(os.urandom(16), memoryview(data), checksum(data))
    chunk = cmd.Chunk(0, stored.block_id, len(data), stored.checksum)
    update = cmd.ChunkUpdate(chunk, b"", 0)
    commit = cmd.CommitChunks(created.ino, (update,), len(data), None, None, None, None, 0)
    await client.meta_apply(commit)
    _, chunks, _ = await client.read_chunks(created.ino)
    return await client.get_block(chunks[0].block_id, chunks[0].checksum)


async def test_a_key_reads_and_writes_files_and_calls_nothing_a_node_does(
    nodes: LocalNodes,
) -> None:
    with trio.fail_after(DEADLINE):
        admin = await nodes.client()
        client = await key_client(nodes, await issue(nodes, admin, "mount-1"))
        await wait_for_filesystem(client)
        data = os.urandom(100_000)
        assert await write_and_read(client, "by-key", data) == data
        address = client.map.meta_nodes()[0].address
        for method, params in NODE_METHODS:
            with pytest.raises(NodeError) as refused:
                await client.pool.call(address, method, params)
            assert refused.value.name == "EPERM", method
            assert f"{method} is for nodes" in refused.value.detail
        with pytest.raises(NodeError) as unknown:
            await client.pool.call(address, "no.such.method", [])
        assert unknown.value.name == "ENOSYS"
        # Node-only metadata, alone or inside a batch, is refused before it reaches the log.
        for command in NODE_COMMANDS:
            with pytest.raises(NodeError) as refused:
                await client.meta_apply(command)
            assert refused.value.name == "EPERM", command.OP
        for query in NODE_QUERIES:
            with pytest.raises(NodeError) as refused:
                await client.meta_query(query)
            assert refused.value.name == "EPERM", query.OP
        # The cluster secret may still do all of it.
        assert (await admin.pool.call(address, "node.stats", []))["node_id"]
        assert await admin.meta_query(cmd.Garbage(10)) == []


async def test_a_key_acts_in_no_session_but_its_own(nodes: LocalNodes) -> None:
    """Every mount learns the others' client ids from the change feed: taken as given, one
    would let any key holder send commands in another mount's session or poll the feed as it
    (telling the leader that mount heard of changes it never saw)."""
    with trio.fail_after(DEADLINE):
        admin = await nodes.client()
        victim = await key_client(nodes, await issue(nodes, admin, "mount-1"))
        other = await key_client(nodes, await issue(nodes, admin, "mount-2"))
        await wait_for_filesystem(victim)
        made = await victim.meta_apply(cmd.Mknod(1, b"theirs", 0o100644, 0, 0, 0, 0))
        theirs, address = victim.client_id, await leader_address(admin)
        read = cmd.ReadChunks(made.ino, 0, 16).to_wire()
        posing = [
            ("meta.apply", [theirs, 10**6, None, cmd.Mkdir(1, b"posed", 0o755, 0, 0, 0).to_wire()]),
            ("meta.apply", [theirs, None, None, cmd.OpenSession().to_wire()]),
            ("meta.changes", [0, theirs]),
            ("meta.read_chunks", [theirs, read]),
        ]
        for method, params in posing:
            with pytest.raises(NodeError) as refused:
                await other.pool.call(address, method, params)
            assert refused.value.name == "EPERM", method
            assert "is not of this key" in refused.value.detail
        # Under its own id, each call is served; the victim's session goes on as before.
        assert await other.pool.call(address, "meta.changes", [0, other.client_id])
        assert await other.pool.call(address, "meta.read_chunks", [other.client_id, read])
        await victim.meta_apply(cmd.Mkdir(1, b"still-theirs", 0o755, 0, 0, 0))
        names = {entry.name for entry in await admin.meta_query(cmd.ReadDir(1, 0, 100))}
        assert b"still-theirs" in names
        assert b"posed" not in names
        # The cluster secret may act as anyone: it may already do everything.
        assert await admin.pool.call(address, "meta.changes", [0, theirs])


async def leader_address(admin: Cluster) -> str:
    """Where the meta group's leader listens."""
    statuses = {node.node_id: status for node, status in await admin.meta_status() if status}
    leader = next(n for n in admin.map.meta_nodes() if statuses[n.node_id]["role"] == "leader")
    return leader.address


NODE_METHODS: list[tuple[str, list[Any]]] = [
    ("node.stats", []),
    ("map.change", ["revoke-key", ["mount-1"]]),
    ("block.delete", [os.urandom(16)]),
    ("block.verify", [os.urandom(16)]),
    ("repair.start", []),
    ("repair.status", []),
    ("meta.status", []),
    ("raft.snapshot_part", ["n2", 5, 9, 1, 0, b"x"]),
    ("paxos.prepare", [[1, "n1"]]),
    ("paxos.accept", [[1, "n1"], None]),
]
NODE_COMMANDS: list[Any] = [
    cmd.Init(4096, 0, 0, 0),
    cmd.Abandon((os.urandom(16),), (1,)),
    cmd.Expire((os.urandom(16),)),
    cmd.ForgetGarbage((os.urandom(16),)),
    cmd.Batch((), (cmd.Mkdir(1, b"ok", 0o755, 0, 0, 0), cmd.Expire((os.urandom(16),)))),
    cmd.Batch((), (cmd.Batch((), (cmd.ForgetGarbage(()),)),)),
]
NODE_QUERIES: list[Any] = [
    cmd.Garbage(10),
    cmd.Blocks(bytes(16), b"\xff" * 16, 10),
    cmd.Clients(b"", 10),
]


async def test_a_keys_raft_message_closes_its_connection_and_changes_nothing(
    nodes: LocalNodes, expected_logs: list[str]
) -> None:
    expected_logs.append("a client sent notification 'raft.message'")
    with trio.fail_after(DEADLINE):
        admin = await nodes.client()
        config = await issue(nodes, admin, "mount-1")
        await wait_for_filesystem(admin)  # a leader is elected
        before = {n.node_id: s for n, s in await admin.meta_status() if s is not None}
        leader = next(n for n in admin.map.meta_nodes() if before[n.node_id]["role"] == "leader")
        pool = NodePool(config, nodes.nursery)
        connection = await pool.connection(leader.address)
        # A vote request with a huge term: from a node, it would depose the leader.
        vote = [1, "n2", leader.node_id, 2**40, 0, 0, False]
        await connection.notify("raft.message", [[vote]], 5.0)

        async def closed() -> bool:
            return connection.closed

        await wait_until(closed, 5)
        after = {n.node_id: s for n, s in await admin.meta_status() if s is not None}
        assert after[leader.node_id]["role"] == "leader"
        assert after[leader.node_id]["term"] == before[leader.node_id]["term"]
        # The key itself still works: only that connection was closed.
        client = await key_client(nodes, config)
        assert (await client.meta_query(cmd.FsInfo())).chunk_size


async def test_a_revoked_key_is_cut_off_and_refused_while_nodes_carry_on(
    nodes: LocalNodes, caplog: pytest.LogCaptureFixture, expected_logs: list[str]
) -> None:
    expected_logs += ["its key mount-1 was revoked", "no key 'mount-1' in force",
                      "did not prove it holds the secret of key mount-1"]  # fmt: skip
    with trio.fail_after(DEADLINE):
        admin = await nodes.client()
        config = await issue(nodes, admin, "mount-1")
        pool = NodePool(config, nodes.nursery)
        open_before = [await pool.connection(address) for address in nodes.seeds]
        await change_keys(nodes, admin, "revoke-key", ["mount-1"])

        # Every node closed the connection the key opened (saying why)...
        async def all_closed() -> bool:
            return all(connection.closed for connection in open_before)

        await wait_until(all_closed, 5)
        closed = [r for r in caplog.records if "its key mount-1 was revoked" in r.getMessage()]
        assert len(closed) == len(nodes.seeds)
        # ...and refuses a new one, saying why.
        for address in nodes.seeds:
            with pytest.raises(Unavailable, match="no key 'mount-1' in force"):
                await pool.call(address, "node.info", [])
        # Issued again under the same name, the key has a new secret: the old one stays out.
        renewed = await issue(nodes, admin, "mount-1")
        assert renewed.secret != config.secret
        with pytest.raises(Unavailable, match="did not prove it holds the secret of key mount-1"):
            await NodePool(config, nodes.nursery).call(nodes.seeds[0], "node.info", [])
        client = await key_client(nodes, renewed)
        assert (await client.meta_query(cmd.FsInfo())).chunk_size
        # Peers with the cluster secret never noticed.
        assert (await admin.meta_query(cmd.FsInfo())).chunk_size
