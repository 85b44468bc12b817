"""Raft messages no member would send, sent to the members of a running meta group.

Each one is refused or dropped with a logged reason: the receiving node stays up, its term
does not move into a range the group cannot leave, and the group keeps a leader and keeps
committing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from ringfs.fs.cluster import Cluster
from ringfs.fs.mount import wait_for_filesystem
from ringfs.node.meta.commands import ROOT_INO, Mkdir
from ringfs.node.raft.messages import MAX_TERM_LEAP
from ringfs.node.rpc.client import ClientConfig, NodePool
from tests.cluster.conftest import SECRET, LocalNodes, start_nodes

DEADLINE = 30.0
HUGE = 2**63 - 1

# Each builds the wire form of one bad message from (a member that sends it, its target, the
# group's current term).
BAD_MESSAGES: dict[str, Callable[[str, str, int], list[Any]]] = {
    "vote from an unknown node": lambda src, dst, term: [1, "n9", dst, term + 1, 9, term, False],
    "append from an unknown node": lambda src, dst, term: [3, "n9", dst, term, 0, 0, [], 0, 1],
    "append with term 2^63-1": lambda src, dst, term: [3, src, dst, HUGE, 0, 0, [], 0, 1],
    "append with a term leap": lambda src, dst, term: [
        3,
        src,
        dst,
        term + MAX_TERM_LEAP + 1,
        0,
        0,
        [],
        0,
        1,
    ],  # fmt: skip
    "vote with huge indexes": lambda src, dst, term: [1, src, dst, term + 1, HUGE, term, False],
    "append with a huge commit": lambda src, dst, term: [3, src, dst, term, 0, 0, [], HUGE, 1],
    "append rewriting a committed entry": lambda src, dst, term: [
        3,
        src,
        dst,
        term + 1,
        0,
        0,
        [[term + 1, 1, 1, b"forged"]],
        1,
        1,
    ],  # fmt: skip
    "snapshot with a huge index": lambda src, dst, term: [5, src, dst, term, [HUGE, 1, [src]]],
    "response from an unknown node": lambda src, dst, term: [
        4,
        "n9",
        dst,
        term,
        True,
        5,
        0,
        0,
        1,
    ],  # fmt: skip
}


async def statuses(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {info.node_id: s for info, s in await cluster.meta_status() if s is not None}


async def current_leader(cluster: Cluster) -> tuple[str, int]:
    while True:
        members = await statuses(cluster)
        found = [(n, s["term"]) for n, s in members.items() if s["role"] == "leader"]
        if len(found) == 1:
            return found[0]
        await trio.sleep(0.05)


@pytest.mark.parametrize("build", BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
async def test_a_bad_raft_message_harms_no_member(
    tmp_path: Path,
    nursery: trio.Nursery,
    build: Callable[[str, str, int], list[Any]],
    expected_logs: list[str],
) -> None:
    expected_logs += ["refused", "dropped"]
    nodes: LocalNodes = await start_nodes(tmp_path, nursery)
    pool = NodePool(ClientConfig(SECRET), nursery)
    try:
        with trio.fail_after(DEADLINE):
            cluster = await nodes.client()
            await wait_for_filesystem(cluster)
            leader, term = await current_leader(cluster)
            follower = next(n for n in nodes.configs if n != leader)
            for target, src in ((follower, leader), (leader, follower)):
                address = nodes.map.node(target).address
                await pool.notify(address, "raft.message", [[build(src, target, term)]], 5.0)
            await trio.sleep(1.0)  # long enough for an election, had one been provoked
            for i in range(5):
                await cluster.meta_apply(Mkdir(ROOT_INO, b"d%d" % i, 0o755, 0, 0, 0))
            members = await every_member_caught_up(cluster)
    finally:
        with trio.CancelScope(shield=True):
            await pool.aclose()
    assert sorted(members) == sorted(nodes.configs)  # every member still answers
    assert all(s["term"] < term + 100 for s in members.values())


async def every_member_caught_up(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """The members' statuses once each has applied what the leader had committed (a follower
    learns the commit index with the leader's next message)."""
    committed = max(s["commit_index"] for s in (await statuses(cluster)).values())
    while True:
        members = await statuses(cluster)
        if all(s["applied_index"] >= committed for s in members.values()):
            return members
        await trio.sleep(0.05)
