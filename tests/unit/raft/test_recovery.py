"""Members that lose their storage, and the rules that keep Raft safe around them.

A member restarted with nothing (or new) is `recovering`: it votes for no log but an empty one
and does not campaign with entries, until a leader that knows its incarnation has brought it
up to its commit index. A leader resets what it knew of a follower that restarted and ignores
answers from the follower's earlier incarnations. Every member refuses votes for `lo` ticks
after it starts, and binds its vote to the leader of its term.
"""

from __future__ import annotations

import random

from ringfs.node.raft.core import (
    FOLLOWER,
    LEADER,
    NEW_MEMBER,
    AppendRequest,
    AppendResponse,
    Entry,
    EntryKind,
    HardState,
    Raft,
    VoteRequest,
    VoteResponse,
)
from tests.unit.raft.test_core import HI, IDS3, LO, Disk, Net, log_of, replies, settled_net


def lose_storage(net: Net, node_id: str) -> Raft:
    """Restart `node_id` with nothing, as after its data directory was wiped."""
    net.disks[node_id] = Disk(hard_state=NEW_MEMBER)
    return net.restart(node_id)


def warnings(net: Net, node_id: str) -> list[str]:
    return [w for n, ready in net.trace if n == node_id for w in ready.warnings]


def replicated(count: int) -> tuple[Net, str, str]:
    """A group whose leader replicated `count` commands: (net, leader, a follower)."""
    net, leader = settled_net()
    for i in range(count):
        net.propose(leader, f"w{i}".encode())
    net.run(2)
    return net, leader, next(n for n in IDS3 if n != leader)


def test_a_follower_that_lost_its_log_is_brought_back_by_snapshot() -> None:
    net, leader, follower = replicated(20)
    net.compact(leader)
    assert net.nodes[leader].match_index[follower] == net.nodes[leader].last_index
    wiped = lose_storage(net, follower)
    assert wiped.status()["recovering"]
    net.run_until(lambda: net.applied[follower] == net.applied[leader])
    assert [(n, p) for n, p in net.snapshot_offers] == [(leader, follower)]
    (warning,) = warnings(net, leader)
    assert f"{follower} restarted without entries it had acknowledged" in warning
    net.propose(leader, b"after")
    net.run(3)
    assert net.machines[follower] == net.machines[leader]
    assert not wiped.status()["recovering"]


def test_a_follower_that_lost_its_log_gets_the_entries_still_in_the_log() -> None:
    net, leader, follower = replicated(5)
    lose_storage(net, follower)
    net.run_until(lambda: net.applied[follower] == net.applied[leader])
    assert net.snapshot_offers == []
    assert net.machines[follower] == net.machines[leader]


def test_a_restarted_follower_with_its_storage_is_not_warned_about() -> None:
    net, leader, follower = replicated(1)
    net.restart(follower)
    net.run(3)
    assert warnings(net, leader) == []
    assert net.nodes[leader].match_index[follower] == net.nodes[leader].last_index


def test_answers_from_an_earlier_incarnation_are_ignored() -> None:
    net, leader, follower = replicated(1)
    raft = net.nodes[leader]
    last = raft.last_index
    # The follower restarts empty and says so; then an answer of its earlier life arrives.
    fresh = AppendResponse(follower, leader, raft.term, False, 0, 1, 0, 0, incarnation=7)
    stale = AppendResponse(follower, leader, raft.term, True, last, 0, 0, 0, incarnation=1)
    net.handle(leader, raft.step(fresh))
    assert raft.match_index[follower] == 0
    net.handle(leader, raft.step(stale))
    assert raft.match_index[follower] == 0  # its old acknowledgement counts no more
    sent = [m for m in net.queue if isinstance(m, AppendRequest) and m.dst == follower]
    assert sent
    assert {m.incarnation for m in sent} == {7}


def test_a_recovering_member_votes_for_no_log_but_an_empty_one() -> None:
    voter = Raft("n1", IDS3, hard_state=NEW_MEMBER, rng=random.Random(0), boot_quiet=False)
    ready = voter.step(VoteRequest("n2", "n1", 3, 5, 2, False))
    assert replies(ready, VoteResponse) == [VoteResponse("n1", "n2", 3, False, False)]
    ready = voter.step(VoteRequest("n2", "n1", 4, 5, 2, True))
    assert replies(ready, VoteResponse) == [VoteResponse("n1", "n2", 3, False, True)]
    # Two empty logs: a new group's first election. It votes, and has nothing to recover.
    ready = voter.step(VoteRequest("n3", "n1", 4, 0, 0, False))
    assert replies(ready, VoteResponse) == [VoteResponse("n1", "n3", 4, True, False)]
    assert ready.hard_state == HardState(4, "n3", recovering=False)


def test_a_recovering_member_with_entries_neither_votes_nor_campaigns() -> None:
    member = Raft(
        "n1",
        IDS3,
        hard_state=HardState(2, None, recovering=True),
        entries=log_of(1, 2),
        rng=random.Random(0),
        boot_quiet=False,
    )
    ready = member.step(VoteRequest("n2", "n1", 3, 9, 2, False))
    assert replies(ready, VoteResponse) == [VoteResponse("n1", "n2", 3, False, False)]
    for _ in range(3 * HI):
        assert not replies(member.tick(), VoteRequest)
    assert member.role == FOLLOWER


def test_with_two_voters_a_recovering_member_votes_as_usual() -> None:
    voters = ("n1", "n2")
    voter = Raft("n1", voters, hard_state=NEW_MEMBER, rng=random.Random(0), boot_quiet=False)
    ready = voter.step(VoteRequest("n2", "n1", 3, 5, 2, False))
    assert replies(ready, VoteResponse) == [VoteResponse("n1", "n2", 3, True, False)]


def test_a_new_group_of_empty_members_elects_a_leader() -> None:
    net = Net()
    for node_id in IDS3:
        net.start(node_id, IDS3, hard_state=NEW_MEMBER, boot_quiet=True)
    leader = net.elect()
    net.propose(leader, b"x")
    net.run(3)
    assert not any(net.nodes[n].status()["recovering"] for n in IDS3)


def test_a_group_restarted_whole_elects_a_leader() -> None:
    net, leader = settled_net()
    net.propose(leader, b"x")
    net.run(2)
    for node_id in IDS3:  # each start refuses votes for a while, as the shell's do
        net.start(node_id, IDS3, boot_quiet=True)
    assert not any(net.nodes[n].role == LEADER for n in IDS3)
    net.run_until(lambda: any(net.is_settled(n) for n in IDS3))


def test_a_member_that_just_started_refuses_votes_for_a_while() -> None:
    voter = Raft("n1", IDS3, hard_state=HardState(2, None), rng=random.Random(0))
    for _ in range(LO - 1):
        assert voter.step(VoteRequest("n2", "n1", 3, 0, 0, False)).messages == ()
        voter.tick()
    assert voter.term == 2  # not even the term moved
    voter.tick()
    ready = voter.step(VoteRequest("n2", "n1", 3, 0, 0, False))
    assert replies(ready, VoteResponse) == [VoteResponse("n1", "n2", 3, True, False)]


def test_a_follower_votes_for_no_one_but_the_leader_it_follows_in_a_term() -> None:
    follower = Raft("n1", IDS3, rng=random.Random(0), boot_quiet=False)
    ready = follower.step(AppendRequest("n2", "n1", 3, 0, 0, (), 0, 1))
    assert ready.hard_state == HardState(3, "n2")  # as if it had voted for it
    for _ in range(2 * HI):
        follower.tick()  # long past stickiness: still no second vote in term 3
    ready = follower.step(VoteRequest("n3", "n1", 3, 9, 3, False))
    assert replies(ready, VoteResponse) == [VoteResponse("n1", "n3", 3, False, False)]


def test_recovery_ends_only_with_a_leader_that_knows_this_incarnation() -> None:
    follower = Raft(
        "n1", IDS3, hard_state=NEW_MEMBER, rng=random.Random(0), boot_quiet=False, incarnation=5
    )
    entries = tuple(Entry(2, i, EntryKind.COMMAND, b"e") for i in (1, 2, 3))
    # Up to the commit index, from a leader that does not know this incarnation yet.
    follower.step(AppendRequest("n2", "n1", 2, 0, 0, entries, 3, 1, incarnation=4))
    assert follower.status()["recovering"]
    # A leader that knows it, but whose commit index is still an entry of an earlier term.
    follower.step(AppendRequest("n3", "n1", 3, 3, 2, (), 3, 1, incarnation=5))
    assert follower.status()["recovering"]
    # Up to an entry of the leader's own term: everything before it is in the log.
    fourth = Entry(3, 4, EntryKind.NOOP, b"")
    ready = follower.step(AppendRequest("n3", "n1", 3, 3, 2, (fourth,), 4, 2, incarnation=5))
    assert not follower.status()["recovering"]
    assert ready.hard_state == HardState(3, "n3", recovering=False)


def test_a_stale_rejection_below_the_match_is_ignored() -> None:
    net, leader, follower = replicated(3)
    raft = net.nodes[leader]
    match = raft.match_index[follower]
    ready = raft.step(AppendResponse(follower, leader, raft.term, False, 0, 2, 0, 1, 1))
    assert ready.messages == ()
    assert raft.match_index[follower] == match
