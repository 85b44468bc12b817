"""Block reads spread over the replicas by load, against real node processes: read from this
process through a cluster client while one node is throttled (stopped most of the time, as on
a host too busy to run it), and after, with the blocks each node served counted by the nodes
themselves (`reads` in `node.stats`). Counts only, no timing: the margins are wide."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import trio

from ringfs.fs.cluster import Cluster as Client
from ringfs.fs.cluster import connected
from ringfs.node.blocks.store import BLOCK_ID_SIZE
from ringfs.node.checksum import checksum
from ringfs.node.errors import NodeError
from ringfs.node.rpc.client import ClientConfig
from ringfs.tools.local import read_secret
from ringfs.tools.readspreadbench import not_the_leader, served, throttled
from tests.e2e.conftest import Cluster
from tests.e2e.test_faults import node_lines

BLOCKS = 100
BLOCK_SIZE = 64 * 1024
#: Reads at once, as many as a mount's readahead has out.
READERS = 5

Block = tuple[bytes, bytes]


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[Client]:
    seeds = tuple(node.address for node in cluster.nodes)
    async with connected(seeds, ClientConfig(read_secret(cluster.secret_file))) as client:
        yield client


async def stored_everywhere(client: Client) -> list[Block]:
    """`BLOCKS` new blocks (id, checksum), once every node holds a verified copy of each (a
    block's last copy may still be on its way when its write returns)."""
    blocks = []
    for _ in range(BLOCKS):
        data = os.urandom(BLOCK_SIZE)
        block_id = os.urandom(BLOCK_ID_SIZE)
        await client.put_block(block_id, memoryview(data), checksum(data))
        blocks.append((block_id, checksum(data)))
    with trio.fail_after(60):
        for node in client.map.nodes:
            for block_id, _ in blocks:
                while not await _holds(client, node.address, block_id):  # noqa: ASYNC110
                    await trio.sleep(0.1)
    return blocks


async def _holds(client: Client, address: str, block_id: bytes) -> bool:
    try:
        await client.pool.call(address, "block.verify", [block_id])
    except NodeError:
        return False
    return True


async def spread(client: Client, blocks: list[Block], rounds: int = 3) -> dict[str, int]:
    """Read every block `rounds` times, `READERS` at once: the blocks each node served."""
    before = await served(client)
    readers = trio.CapacityLimiter(READERS)

    async def read(block_id: bytes, block_checksum: bytes) -> None:
        async with readers:
            assert len(await client.get_block(block_id, block_checksum)) == BLOCK_SIZE

    async with trio.open_nursery() as nursery:
        for _ in range(rounds):
            for block in blocks:
                nursery.start_soon(read, *block)
    after = await served(client)
    counts = {name: after[name] - before[name] for name in after}
    assert sum(counts.values()) == rounds * len(blocks)  # one node served each read
    return counts


def fair(counts: dict[str, int], name: str) -> bool:
    """Whether `name` served a fair fraction of the reads: an even share is a third."""
    return counts[name] > sum(counts.values()) / 6


async def throttled_reads(cluster: Cluster, client: Client, blocks: list[Block]) -> str:
    """Read the blocks with a node throttled; check it served clearly fewer than each of the
    others, and return its name."""
    slow = await not_the_leader(client)  # a stopped leader would cost an election, not reads
    process = cluster.node(slow).process
    assert process is not None
    with throttled(process.pid):
        counts = await spread(client, blocks)
    assert all(counts[slow] < count / 3 for name, count in counts.items() if name != slow), (
        slow,
        counts,
    )
    return slow


async def test_equal_nodes_serve_a_fair_share_each(cluster: Cluster, client: Client) -> None:
    counts = await spread(client, await stored_everywhere(client))
    assert all(fair(counts, name) for name in counts), counts
    # `ringfs status` shows what each node served, in its READS column.
    status = await trio.to_thread.run_sync(cluster.status)
    assert any(line.endswith("    READS  ROLE") for line in status.splitlines())
    shown = {name: int(line.split()[7]) for name, line in node_lines(status).items()}
    assert shown == await served(client)


async def test_reads_move_away_from_a_throttled_node(cluster: Cluster, client: Client) -> None:
    await throttled_reads(cluster, client, await stored_everywhere(client))


async def test_a_node_gets_reads_again_once_the_throttle_ends(
    cluster: Cluster, client: Client
) -> None:
    blocks = await stored_everywhere(client)
    slow = await throttled_reads(cluster, client, blocks)
    # Its estimate fades and its next answers are fast: within a few fresh sets of reads (a
    # set takes about a second), it serves a fair share again.
    for _ in range(20):
        counts = await spread(client, blocks, rounds=1)
        if fair(counts, slow):
            break
    assert fair(counts, slow), (slow, counts)
