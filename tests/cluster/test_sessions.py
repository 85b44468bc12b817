"""Client sessions against in-process nodes: the leader ends the session of a client that went
silent, with what it kept, and the client goes on under a new one."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from ringfs.fs.cluster import Cluster
from ringfs.fs.mount import wait_for_filesystem
from ringfs.node.errors import SESSION_EXPIRED, NodeError
from ringfs.node.meta.commands import ROOT_INO, Clients, Mkdir, ReadDir
from tests.cluster.conftest import start_nodes

EXPIRY = 1.0


def mkdir(name: bytes) -> Mkdir:
    return Mkdir(ROOT_INO, name, 0o755, 0, 0, 0)


async def clients(cluster: Cluster) -> list[bytes]:
    found: list[bytes] = await cluster.meta_query(Clients(b"", 100))
    return found


async def keep_polling(cluster: Cluster) -> None:
    """What a mount's change feed does all the time: it says the client is alive."""
    since = 0
    while True:
        since = (await cluster.meta_changes(since)).upto


async def test_a_silent_client_loses_its_session_and_goes_on_under_a_new_one(
    tmp_path: Path, nursery: trio.Nursery, expected_logs: list[str]
) -> None:
    expected_logs.append("the cluster ended this client's session")
    nodes = await start_nodes(tmp_path, nursery, gc_grace=0.2, mount_expiry=EXPIRY)
    silent, polling = await nodes.client(), await nodes.client()
    await wait_for_filesystem(silent)
    renewed: list[bytes] = []
    silent.session_listeners.append(renewed.append)
    old = silent.client_id
    await silent.meta_apply(mkdir(b"before"))
    await polling.meta_apply(mkdir(b"alive"))
    nursery.start_soon(keep_polling, polling)
    assert sorted(await clients(polling)) == sorted([old, polling.client_id])

    with trio.fail_after(20):
        while old in await clients(polling):  # noqa: ASYNC110 (state in the metadata)
            await trio.sleep(0.1)
    assert await clients(polling) == [polling.client_id]  # polled all along: kept

    # The next command of the silent client is refused: it may be a late copy of one that
    # ran before the session ended, so it must not run now.
    with pytest.raises(NodeError) as ended:
        await silent.meta_apply(mkdir(b"after"))
    assert ended.value.name == SESSION_EXPIRED
    assert renewed == [silent.client_id] != [old]
    await silent.meta_apply(mkdir(b"after"))  # under the new session
    listing = await silent.meta_query(ReadDir(ROOT_INO, 0, 100))
    assert sorted(e.name for e in listing)[2:] == [b"after", b"alive", b"before"]
    assert sorted(await clients(polling)) == sorted([silent.client_id, polling.client_id])


async def test_a_client_that_only_reads_opens_no_session(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    nodes = await start_nodes(tmp_path, nursery)
    reader = await nodes.client()
    await wait_for_filesystem(reader)
    await reader.meta_query(ReadDir(ROOT_INO, 0, 10))
    assert await clients(reader) == []
