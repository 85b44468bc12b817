"""The Raft core (`ringfs.node.raft.core`), driven by hand: no clock, no sockets.

`Net` is a tiny delivery loop: nodes, their "disks" (what the Readys asked to persist), their
state machines, and a queue of messages that can be dropped by partitions. On every Ready it
checks the invariants that must hold in every test: state is persisted before the messages that
rely on it, entries are applied once and in order, every node applies the same entry at an index,
at most one leader exists per term, and the core's log matches what was persisted.
"""

from __future__ import annotations

import random
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack
import pytest

from ringfs.node.raft.core import (
    CANDIDATE,
    EMPTY_READY,
    FOLLOWER,
    LEADER,
    NEW_MEMBER,
    PRE_CANDIDATE,
    AppendRequest,
    AppendResponse,
    ConfigChangePending,
    Entry,
    EntryKind,
    HardState,
    Message,
    NotLeader,
    Raft,
    Ready,
    SnapshotMeta,
    SnapshotRequest,
    SnapshotResponse,
    VoteRequest,
    VoteResponse,
    decode_voters,
    encode_voters,
    message_from_wire,
    message_to_wire,
)

IDS3 = ("n1", "n2", "n3")
IDS5 = ("n1", "n2", "n3", "n4", "n5")
S5 = ("s1", "s2", "s3", "s4", "s5")
LO, HI = 10, 20


def entry(term: int, index: int, kind: EntryKind = EntryKind.COMMAND) -> Entry:
    data = encode_voters(IDS3) if kind is EntryKind.CONFIG else f"{term}.{index}".encode()
    return Entry(term, index, kind, data)


def log_of(*terms: int) -> list[Entry]:
    """A log whose entry i+1 has term terms[i]."""
    return [entry(term, index) for index, term in enumerate(terms, start=1)]


def is_vote(m: Message) -> bool:
    return isinstance(m, VoteRequest | VoteResponse)


def wire_trip(m: Message) -> Message:
    return message_from_wire(msgpack.unpackb(msgpack.packb(message_to_wire(m))))


@dataclass
class Disk:
    hard_state: HardState = HardState(0, None)
    snapshot: SnapshotMeta | None = None
    entries: list[Entry] = field(default_factory=list)

    @property
    def last_index(self) -> int:
        if self.entries:
            return self.entries[-1].index
        return self.snapshot.last_index if self.snapshot else 0


class Net:
    """Nodes wired through a message queue, with persistence and state machines."""

    def __init__(self, ids: tuple[str, ...] = (), *, seed: int = 0, **options: Any) -> None:
        # ReadIndex rounds unless a test asks for the leader lease.
        self.seed, self.options = seed, {"lease_margin": None, "boot_quiet": False, **options}
        self.nodes: dict[str, Raft] = {}
        self.disks: dict[str, Disk] = {}
        self.boot_args: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {}
        self.boots: dict[str, int] = defaultdict(int)
        # State machines: index -> data of applied COMMAND entries, and the applied index.
        self.machines: dict[str, dict[int, bytes]] = {}
        self.applied: dict[str, int] = {}
        self.queue: deque[Message] = deque()
        self.blocked: set[tuple[str, str]] = set()
        self.down: set[str] = set()
        self.trace: list[tuple[str, Ready]] = []
        self.sent: list[Message] = []
        self.reads: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.failed: dict[str, list[int]] = defaultdict(list)
        self.snapshot_offers: list[tuple[str, str]] = []
        self.chosen: dict[int, Entry] = {}
        self.leaders: dict[int, str] = {}
        self.images: dict[tuple[int, int], dict[int, bytes]] = {}
        for node_id in ids:
            self.start(node_id, ids)

    # -- nodes ------------------------------------------------------------------------------

    def start(
        self,
        node_id: str,
        voters: tuple[str, ...],
        *,
        hard_state: HardState | None = None,
        entries: Iterable[Entry] = (),
        **options: Any,
    ) -> Raft:
        disk = self.disks.setdefault(node_id, Disk())
        disk.hard_state = hard_state or disk.hard_state
        disk.entries = list(entries) or disk.entries
        self.boot_args[node_id] = (voters, options)
        return self.restart(node_id)

    def restart(self, node_id: str) -> Raft:
        """Boot `node_id` from its disk, as after a crash: the state machine restarts from the
        snapshot and the core from the persisted term, vote and log."""
        disk = self.disks[node_id]
        voters, options = self.boot_args[node_id]
        self.boots[node_id] += 1
        self.nodes[node_id] = raft = Raft(
            node_id,
            voters,
            hard_state=disk.hard_state,
            snapshot=disk.snapshot,
            entries=list(disk.entries),
            rng=random.Random(f"{self.seed}/{node_id}/{self.boots[node_id]}"),
            incarnation=self.boots[node_id],
            **{**self.options, **options},
        )
        snap = disk.snapshot
        self.machines[node_id] = dict(self.images[snap.last_index, snap.last_term]) if snap else {}
        self.applied[node_id] = snap.last_index if snap else 0
        self.down.discard(node_id)
        return raft

    def crash(self, node_id: str) -> None:
        self.down.add(node_id)

    def compact(self, node_id: str) -> SnapshotMeta:
        """Snapshot `node_id`'s state machine at its applied index and compact its log."""
        raft, disk = self.nodes[node_id], self.disks[node_id]
        meta = raft.snapshot_meta(self.applied[node_id])
        raft.compact(meta)
        self.images[meta.last_index, meta.last_term] = dict(self.machines[node_id])
        disk.snapshot = meta
        disk.entries = [e for e in disk.entries if e.index > meta.last_index]
        return meta

    # -- the network ----------------------------------------------------------------------------

    def isolate(self, *node_ids: str) -> None:
        for a in node_ids:
            for b in self.nodes:
                self.blocked |= {(a, b), (b, a)}

    def heal(self) -> None:
        self.blocked.clear()

    def tick(self, *node_ids: str, times: int = 1) -> None:
        for _ in range(times):
            for node_id in node_ids or tuple(self.nodes):
                if node_id not in self.down:
                    self.handle(node_id, self.nodes[node_id].tick())

    def deliver(self, keep: Callable[[Message], bool] | None = None, limit: int = 100_000) -> None:
        """Deliver queued messages (only those `keep` accepts, the others stay queued) until
        none is left; messages across a partition or to a crashed node are lost."""
        held: deque[Message] = deque()
        for _ in range(limit):
            if not self.queue:
                break
            m = self.queue.popleft()
            if keep is not None and not keep(m):
                held.append(m)
            elif (m.src, m.dst) not in self.blocked and m.dst in self.nodes.keys() - self.down:
                self.handle(m.dst, self.nodes[m.dst].step(wire_trip(m)))
        else:
            raise AssertionError("messages never stopped flowing")
        self.queue.extendleft(reversed(held))

    def run(self, ticks: int) -> None:
        for _ in range(ticks):
            self.tick()
            self.deliver()

    def run_until(self, done: Callable[[], bool], max_ticks: int = 300) -> int:
        for ticks in range(max_ticks):
            if done():
                return ticks
            self.run(1)
        raise AssertionError("condition not reached")

    def leader(self) -> str:
        """The single leader among the running nodes."""
        leaders = [n for n, r in self.nodes.items() if r.role == LEADER and n not in self.down]
        assert len(leaders) == 1, leaders
        return leaders[0]

    def elect(self, node_id: str | None = None) -> str:
        """Let `node_id` time out first and deliver only the votes until it leads; without
        `node_id`, run the whole group until it has a leader whose first entry is committed."""
        if node_id is None:
            self.run_until(lambda: any(self.is_settled(n) for n in self.nodes))
            return self.leader()
        raft = self.nodes[node_id]
        for _ in range(HI):
            self.tick(node_id)
            if raft.role != FOLLOWER:
                break
        self.deliver(is_vote)
        assert raft.role == LEADER
        return node_id

    def is_settled(self, node_id: str) -> bool:
        raft = self.nodes[node_id]
        return raft.role == LEADER and self.applied[node_id] == raft.last_index

    def propose(self, node_id: str, data: bytes) -> int:
        index, ready = self.nodes[node_id].propose(data)
        self.handle(node_id, ready)
        return index

    # -- the shell's duties, checked ----------------------------------------------------------

    def handle(self, node_id: str, ready: Ready) -> None:
        raft, disk = self.nodes[node_id], self.disks[node_id]
        self.trace.append((node_id, ready))
        self._persist(disk, ready)
        assert raft.last_index == disk.last_index, "every log change is reported"
        if ready.install_snapshot:
            meta = ready.install_snapshot
            self.machines[node_id] = dict(self.images[meta.last_index, meta.last_term])
            self.applied[node_id] = meta.last_index
        for m in ready.messages:
            self._check_durable(disk, m)
        self.sent.extend(ready.messages)
        self.queue.extend(ready.messages)
        for peer in ready.send_snapshot:
            self.snapshot_offers.append((node_id, peer))
            if raft.snapshot is None:  # as the shell does: it takes one
                self.compact(node_id)
            assert raft.snapshot is not None
            self.queue.append(SnapshotRequest(node_id, peer, raft.term, raft.snapshot))
        for e in ready.committed:
            self._apply(node_id, disk, e)
        self.reads[node_id].extend(ready.reads)
        self.failed[node_id].extend(ready.failed_reads)
        if raft.role == LEADER:
            assert self.leaders.setdefault(raft.term, node_id) == node_id, "two leaders in a term"

    @staticmethod
    def _persist(disk: Disk, ready: Ready) -> None:
        if ready.hard_state is not None:
            disk.hard_state = ready.hard_state
        if ready.truncate_from is not None:
            disk.entries = [e for e in disk.entries if e.index < ready.truncate_from]
        for e in ready.append:
            assert e.index == disk.last_index + 1, "appends must extend the persisted log"
            disk.entries.append(e)
        if ready.install_snapshot:
            disk.snapshot = ready.install_snapshot
            disk.entries = [e for e in disk.entries if e.index > disk.snapshot.last_index]

    @staticmethod
    def _check_durable(disk: Disk, m: Message) -> None:
        """What a message promises is already on disk when it is sent."""
        vote = (disk.hard_state.term, disk.hard_state.voted_for)
        if isinstance(m, VoteResponse) and m.granted and not m.pre_vote:
            assert vote == (m.term, m.dst)
        if isinstance(m, VoteRequest) and not m.pre_vote:
            assert vote == (m.term, m.src)
        if isinstance(m, AppendResponse | SnapshotResponse | AppendRequest):
            assert disk.hard_state.term == m.term
        if isinstance(m, AppendResponse) and m.success:
            assert disk.last_index >= m.match_index

    def _apply(self, node_id: str, disk: Disk, e: Entry) -> None:
        assert e.index == self.applied[node_id] + 1, "committed entries apply once, in order"
        assert e in disk.entries, "a committed entry is applied only once persisted"
        assert self.chosen.setdefault(e.index, e) == e, "two different entries committed"
        self.applied[node_id] = e.index
        if e.kind is EntryKind.COMMAND:
            self.machines[node_id][e.index] = e.data


def settled_net(ids: tuple[str, ...] = IDS3, **options: Any) -> tuple[Net, str]:
    net = Net(ids, **options)
    return net, net.elect()


def replies(ready: Ready, kind: type[Message]) -> list[Any]:
    return [m for m in ready.messages if isinstance(m, kind)]


# --- elections --------------------------------------------------------------------------------


def test_single_node_elects_itself_and_commits() -> None:
    raft = Raft("n1", ("n1",), rng=random.Random(1))
    ready = Ready()
    for _ in range(HI):
        ready = raft.tick()
        if raft.role == LEADER:
            break
    assert raft.role == LEADER
    assert raft.term == 1
    assert raft.leader == "n1"
    assert ready.hard_state == HardState(1, "n1")
    assert ready.append == ready.committed == (Entry(1, 1, EntryKind.NOOP, b""),)
    assert ready.messages == ()
    index, ready = raft.propose(b"x")
    assert index == 2
    assert ready.append == ready.committed == (Entry(1, 2, EntryKind.COMMAND, b"x"),)
    assert raft.read_index(7).reads == ((7, 2),)


def test_three_nodes_elect_exactly_one_leader() -> None:
    for seed in range(5):
        net = Net(IDS3, seed=seed)
        leader = net.elect()
        net.run(50)
        assert net.leader() == leader
        assert {r.term for r in net.nodes.values()} == {net.nodes[leader].term}
        assert {r.leader for r in net.nodes.values()} == {leader}
        assert net.nodes[leader].term <= 2


def test_election_timeouts_are_random_and_redrawn() -> None:
    def campaign_gaps(seed: int) -> list[int]:
        raft = Raft("n1", IDS3, rng=random.Random(seed))
        gaps, ticks = [], 0
        while len(gaps) < 20:
            ticks += 1
            if replies(raft.tick(), VoteRequest):  # nobody answers: it campaigns again
                gaps.append(ticks)
                ticks = 0
        return gaps

    gaps = campaign_gaps(1)
    assert all(LO <= gap < HI for gap in gaps)
    assert len(set(gaps)) > 3
    assert campaign_gaps(2) != gaps


# --- replication ------------------------------------------------------------------------------


def test_log_replication_and_commit() -> None:
    net, leader = settled_net()
    indexes = [net.propose(leader, f"cmd{i}".encode()) for i in range(5)]
    net.deliver()
    assert net.nodes[leader].commit_index == indexes[-1]
    assert net.applied[leader] == indexes[-1]
    net.run(2)  # followers learn the commit index from the next heartbeat
    expected = {i: f"cmd{n}".encode() for n, i in enumerate(indexes)}
    assert all(machine == expected for machine in net.machines.values())


def test_commands_proposed_together_share_one_write_and_one_message() -> None:
    net, leader = settled_net()
    first, ready = net.nodes[leader].propose(b"a", b"b", b"c")
    assert [e.index for e in ready.append] == [first, first + 1, first + 2]
    assert [e.data for e in ready.append] == [b"a", b"b", b"c"]
    appends = replies(ready, AppendRequest)
    assert len(appends) == 1
    assert [e.data for e in appends[0].entries] == [b"a", b"b", b"c"]
    net.handle(leader, ready)
    net.deliver()
    assert net.applied[leader] == first + 2
    with pytest.raises(ValueError, match="nothing to propose"):
        net.nodes[leader].propose()


def test_new_entries_go_at_once_to_the_followers_a_commit_needs_the_rest_at_a_tick() -> None:
    net, leader = settled_net(("n1", "n2", "n3", "n4", "n5"))
    first, ready = net.nodes[leader].propose(b"a")
    prompt = {m.dst for m in replies(ready, AppendRequest)}
    assert len(prompt) == 2  # with the leader, three of five: a majority
    net.handle(leader, ready)
    net.deliver()
    assert net.nodes[leader].commit_index == first
    later = {n for n in net.nodes if n != leader} - prompt
    assert all(net.nodes[n].last_index < first for n in later)
    # The next entries go to the same two, and the ones left out take them all at the tick.
    second = net.propose(leader, b"b")
    assert {m.dst for m in net.queue} == prompt
    net.deliver()
    net.tick(leader)
    batches = [m for m in net.queue if isinstance(m, AppendRequest) and m.entries]
    assert {m.dst for m in batches} == later
    assert all([e.data for e in m.entries] == [b"a", b"b"] for m in batches)
    net.deliver()
    assert all(net.nodes[n].last_index == second for n in net.nodes)


def test_a_follower_that_stops_answering_is_replaced_for_new_entries_within_a_tick() -> None:
    net, leader = settled_net()
    first, ready = net.nodes[leader].propose(b"a")
    (prompt,) = {m.dst for m in replies(ready, AppendRequest)}
    (other,) = set(IDS3) - {leader, prompt}
    net.handle(leader, ready)
    net.deliver()
    net.isolate(prompt)
    second = net.propose(leader, b"b")
    net.deliver()
    assert net.nodes[leader].commit_index == first
    net.tick(leader)  # the other follower takes what it missed, and commits it
    net.deliver()
    assert net.nodes[leader].commit_index == second
    # It holds more of the log now: new entries go to it at once.
    third, ready = net.nodes[leader].propose(b"c")
    assert [m.dst for m in replies(ready, AppendRequest)] == [other]
    net.handle(leader, ready)
    net.deliver()
    assert net.nodes[leader].commit_index == third


def test_no_commit_without_a_majority() -> None:
    net, leader = settled_net()
    followers = [n for n in IDS3 if n != leader]
    net.isolate(*followers)
    index = net.propose(leader, b"lonely")
    net.deliver()
    assert net.nodes[leader].commit_index < index
    net.heal()
    net.run(2)
    assert net.nodes[leader].commit_index == index
    net.run(2)
    assert all(m.get(index) == b"lonely" for m in net.machines.values())


def _figure8() -> Net:
    """Figure 8 (c): s1 leads term 4 and has copied its term-2 entry at index 2 to a majority
    (s1, s3, s4; s2 had it already); its term-4 entry at index 3 is on s1 only. s5 holds a
    term-3 entry at index 2 and is down."""
    net = Net(pre_vote=False, check_quorum=False)
    # One entry per message, so that index 2 can arrive without index 3.
    net.start(
        "s1", S5, hard_state=HardState(3, None), entries=log_of(1, 2), max_entries_per_message=1
    )
    net.start("s2", S5, hard_state=HardState(3, None), entries=log_of(1, 2))
    net.start("s3", S5, hard_state=HardState(3, None), entries=log_of(1))
    net.start("s4", S5, hard_state=HardState(3, None), entries=log_of(1))
    net.start("s5", S5, hard_state=HardState(3, "s5"), entries=log_of(1, 3))
    net.crash("s5")
    net.elect("s1")
    assert net.nodes["s1"].term == 4

    def keep(m: Message) -> bool:
        """Nothing for s2; index 3 only where it is refused (the log lacks index 2)."""
        if isinstance(m, AppendRequest) and any(e.index == 3 for e in m.entries):
            return m.dst != "s2" and net.disks[m.dst].last_index < m.prev_index
        return m.dst != "s2"

    net.deliver(keep)
    # Held: index 3 for everyone (s5 is down).
    assert sorted(m.dst for m in net.queue) == list(S5[1:])
    assert all(isinstance(m, AppendRequest) and m.entries[-1].index == 3 for m in net.queue)
    assert [net.disks[s].entries[1].term for s in ("s1", "s3", "s4")] == [2, 2, 2]
    assert net.nodes["s1"].match_index["s3"] == net.nodes["s1"].match_index["s4"] == 2
    return net


def test_figure8_entry_of_an_older_term_on_a_majority_is_not_committed() -> None:
    net = _figure8()
    assert net.nodes["s1"].commit_index == 0
    assert net.chosen == {}
    # It was right not to: s5 can still win term 5 and overwrite index 2 everywhere.
    net.crash("s1")
    net.queue.clear()
    net.restart("s5")
    for _ in range(3 * HI):  # only s5's timer runs, so that it campaigns
        net.tick("s5")
        net.deliver()
    assert net.nodes["s5"].role == LEADER
    assert net.applied["s5"] == 3
    assert all(net.disks[s].entries[1].term == 3 for s in ("s2", "s3", "s4", "s5"))
    assert net.chosen[2].term == 3


def test_figure8_entry_of_an_older_term_commits_with_one_of_the_current_term() -> None:
    net = _figure8()
    net.deliver()  # s3 and s4 get index 3 (term 4)
    assert net.nodes["s1"].commit_index == 3
    committed = [e for n, r in net.trace if n == "s1" for e in r.committed]
    assert [(e.index, e.term) for e in committed] == [(1, 1), (2, 2), (3, 4)]
    # Now s5 cannot win: a majority has a log more up-to-date than its own.
    net.crash("s1")
    net.queue.clear()
    net.restart("s5")
    net.run(100)
    assert net.nodes["s5"].role != LEADER
    assert net.chosen[2].term == 2


@pytest.mark.parametrize(
    ("leader_log", "hint", "resend_from"),
    [
        # The leader has no entry of the conflicting term 2: back off to its first index.
        ((1, 3, 3), (2, 2), 2),
        # The leader has term 2 up to index 2: back off to just after it.
        ((1, 2, 3), (2, 2), 3),
    ],
)
def test_conflicting_follower_log_is_truncated_and_rewritten(
    leader_log: tuple[int, ...], hint: tuple[int, int], resend_from: int
) -> None:
    net = Net()
    net.start("n1", IDS3, hard_state=HardState(3, None), entries=log_of(*leader_log))
    net.start("n2", IDS3, hard_state=HardState(2, None), entries=log_of(1, 2, 2, 2))
    net.start("n3", IDS3, hard_state=HardState(3, None), entries=log_of(*leader_log))
    net.elect("n1")
    net.deliver(lambda m: {m.src, m.dst} == {"n1", "n2"})
    steps = [(n, r) for n, r in net.trace if r.messages or r.append]
    rejection = next(m for _, r in steps for m in replies(r, AppendResponse) if not m.success)
    assert (rejection.conflict_term, rejection.conflict_index) == hint
    retry = [m for _, r in steps for m in replies(r, AppendRequest) if m.dst == "n2"][1]
    assert retry.prev_index == resend_from - 1
    rewrite = next(r for n, r in steps if n == "n2" and r.truncate_from is not None)
    assert rewrite.truncate_from == resend_from
    assert net.disks["n2"].entries == net.disks["n1"].entries
    assert net.nodes["n1"].commit_index == 4


def test_shorter_follower_log_hints_its_end() -> None:
    follower = Raft("n2", IDS3, entries=log_of(1, 1), rng=random.Random(0), boot_quiet=False)
    ready = follower.step(AppendRequest("n1", "n2", 2, 5, 2, (), 0, 9))
    (reply,) = ready.messages
    assert reply == AppendResponse("n2", "n1", 2, False, 0, 3, 0, 9, incarnation=1)
    assert ready.hard_state == HardState(2, "n1")  # the term's leader, as if voted for
    assert ready.append == ()


def test_stale_or_duplicated_append_does_not_truncate_later_entries() -> None:
    follower = Raft("n2", IDS3, rng=random.Random(0))
    e1, e2, e3 = log_of(1, 1, 1)
    ready = follower.step(AppendRequest("n1", "n2", 1, 0, 0, (e1, e2, e3), 1, 1))
    assert ready.append == (e1, e2, e3)
    assert ready.committed == (e1,)
    for stale in (
        AppendRequest("n1", "n2", 1, 0, 0, (e1,), 0, 0),
        AppendRequest("n1", "n2", 1, 1, 1, (e2,), 1, 0),
        AppendRequest("n1", "n2", 1, 0, 0, (e1, e2, e3), 1, 1),
    ):
        ready = follower.step(stale)
        assert ready.truncate_from is None
        assert ready.append == ()
        (reply,) = ready.messages
        assert reply.success
        assert reply.match_index == stale.prev_index + len(stale.entries)
        assert follower.last_index == 3
    # Only a real conflict truncates, and only from the conflicting entry on.
    new2 = Entry(2, 2, EntryKind.COMMAND, b"new")
    ready = follower.step(AppendRequest("n3", "n2", 2, 1, 1, (new2,), 1, 1))
    assert ready.truncate_from == 2
    assert ready.append == (new2,)
    assert follower.last_index == 2


def test_requests_from_an_older_term_are_refused() -> None:
    follower = Raft(
        "n2", IDS3, hard_state=HardState(3, "n3"), entries=log_of(1), rng=random.Random(0)
    )
    ready = follower.step(AppendRequest("n1", "n2", 2, 1, 1, (entry(2, 2),), 2, 5))
    assert ready.messages == (AppendResponse("n2", "n1", 3, False, 0, 0, 0, 5, incarnation=1),)
    assert ready.append == ()
    assert (follower.last_index, follower.commit_index, follower.leader) == (1, 0, None)
    ready = follower.step(SnapshotRequest("n1", "n2", 2, SnapshotMeta(5, 2, IDS3)))
    assert ready.messages == (SnapshotResponse("n2", "n1", 3, 0, incarnation=1),)
    assert ready.install_snapshot is None
    assert follower.snapshot is None
    # The stale leader learns the newer term from the answer and steps down.
    net, leader = settled_net()
    raft = net.nodes[leader]
    raft.step(AppendResponse("n9", leader, raft.term + 1, False, 0, 0, 0, 0))
    assert raft.role == FOLLOWER


def test_followers_commit_only_what_they_hold_from_this_leader() -> None:
    follower = Raft("n2", IDS3, entries=log_of(1, 1, 1), rng=random.Random(0))
    # The leader's commit index is 3, but only index 1 is known to match: commit 1.
    ready = follower.step(AppendRequest("n1", "n2", 1, 0, 0, (entry(1, 1),), 3, 1))
    assert follower.commit_index == 1
    assert [e.index for e in ready.committed] == [1]
    follower.step(AppendRequest("n1", "n2", 1, 3, 1, (), 3, 2))
    assert follower.commit_index == 3
    follower.step(AppendRequest("n1", "n2", 1, 0, 0, (), 1, 3))
    assert follower.commit_index == 3  # never decreases


# --- votes -------------------------------------------------------------------------------------


def voter_in_term_2() -> Raft:
    """n1 in term 2, no vote yet, its log ending at (2, term 2), past its quiet period."""
    return Raft(
        "n1",
        IDS3,
        hard_state=HardState(2, None),
        entries=log_of(1, 2),
        rng=random.Random(0),
        boot_quiet=False,
    )


def test_vote_rules() -> None:
    voter = voter_in_term_2()

    def ask(src: str, term: int, last_index: int, last_term: int) -> tuple[Ready, VoteResponse]:
        ready = voter.step(VoteRequest(src, "n1", term, last_index, last_term, False))
        (reply,) = ready.messages
        assert isinstance(reply, VoteResponse)
        assert reply.term == voter.term
        return ready, reply

    # Older last term: refused, but the new term is adopted and persisted.
    ready, reply = ask("n2", 3, 9, 1)
    assert not reply.granted
    assert ready.hard_state == HardState(3, None)
    # Same last term, shorter log: refused.
    ready, reply = ask("n2", 3, 1, 2)
    assert not reply.granted
    assert ready.hard_state is None
    # Up-to-date: granted, and the vote is in the same Ready.
    ready, reply = ask("n2", 3, 2, 2)
    assert reply.granted
    assert ready.hard_state == HardState(3, "n2")
    # One vote per term: n3 is refused even with a better log; n2 may ask again.
    assert not ask("n3", 3, 9, 9)[1].granted
    ready, reply = ask("n2", 3, 2, 2)
    assert reply.granted
    assert ready.hard_state is None
    # A stale term is refused; a new term frees the vote.
    assert not ask("n3", 2, 9, 9)[1].granted
    ready, reply = ask("n3", 4, 2, 2)
    assert reply.granted
    assert ready.hard_state == HardState(4, "n3")


def test_granting_a_vote_resets_the_election_timer() -> None:
    voter = Raft("n1", IDS3, rng=random.Random(0), boot_quiet=False)
    for _ in range(LO - 1):
        voter.tick()
    voter.step(VoteRequest("n2", "n1", 1, 0, 0, False))
    for _ in range(LO - 1):
        assert not replies(voter.tick(), VoteRequest)


def test_pre_vote_changes_no_term_or_vote() -> None:
    voter = voter_in_term_2()
    ready = voter.step(VoteRequest("n2", "n1", 5, 2, 2, True))
    assert ready.messages == (VoteResponse("n1", "n2", 2, True, True),)
    assert ready.hard_state is None
    assert voter.term == 2
    ready = voter.step(VoteRequest("n2", "n1", 5, 1, 2, True))  # log behind
    assert ready.messages == (VoteResponse("n1", "n2", 2, False, True),)
    assert ready.hard_state is None
    assert voter.term == 2


def test_pre_candidate_becomes_candidate_only_with_a_majority() -> None:
    node = Raft("n1", IDS3, hard_state=HardState(4, "n3"), rng=random.Random(0))
    while node.role == FOLLOWER:
        ready = node.tick()
    assert node.role == PRE_CANDIDATE
    assert ready.hard_state is None
    assert node.term == 4
    assert {m.term for m in replies(ready, VoteRequest)} == {5}
    assert all(m.pre_vote for m in replies(ready, VoteRequest))
    # A granted pre-vote carries the voter's own (possibly older) term.
    ready = node.step(VoteResponse("n2", "n1", 3, True, True))
    assert node.role == CANDIDATE
    assert node.term == 5
    assert ready.hard_state == HardState(5, "n1")
    assert {(m.term, m.pre_vote) for m in replies(ready, VoteRequest)} == {(5, False)}


def test_rejected_pre_vote_with_a_higher_term_makes_a_follower() -> None:
    node = Raft("n1", IDS3, rng=random.Random(0))
    while node.role == FOLLOWER:
        node.tick()
    ready = node.step(VoteResponse("n2", "n1", 7, False, True))
    assert node.role == FOLLOWER
    assert ready.hard_state == HardState(7, None)


def test_follower_that_hears_a_leader_ignores_vote_requests() -> None:
    net, leader = settled_net()
    follower = next(n for n in IDS3 if n != leader)
    raft, term = net.nodes[follower], net.nodes[leader].term
    for pre_vote in (True, False):
        ready = raft.step(VoteRequest("n9", follower, term + 5, 99, 99, pre_vote))
        assert ready == Ready()
        assert raft.term == term
    net.isolate(follower)
    net.tick(follower, times=LO)  # no word from the leader for a minimum election timeout
    ready = raft.step(VoteRequest("n9", follower, term + 5, 99, 99, False))
    assert replies(ready, VoteResponse)[0].granted
    assert raft.term == term + 5


def test_without_check_quorum_pre_votes_are_refused_while_a_leader_is_heard() -> None:
    net, leader = settled_net(check_quorum=False)
    follower = next(n for n in IDS3 if n != leader)
    raft, term = net.nodes[follower], net.nodes[leader].term
    ready = raft.step(VoteRequest("n9", follower, term + 1, 99, 99, True))
    assert ready.messages == (VoteResponse(follower, "n9", term, False, True),)
    ready = net.nodes[leader].step(VoteRequest("n9", leader, term + 1, 99, 99, True))
    assert ready.messages == (VoteResponse(leader, "n9", term, False, True),)
    net.isolate(follower)
    net.tick(follower, times=LO)
    ready = raft.step(VoteRequest("n9", follower, term + 1, 99, 99, True))
    assert ready.messages == (VoteResponse(follower, "n9", term, True, True),)


def test_partitioned_node_rejoins_without_disturbing_the_leader() -> None:
    net, leader = settled_net()
    term = net.nodes[leader].term
    lonely = next(n for n in IDS3 if n != leader)
    net.isolate(lonely)
    for i in range(10):
        net.propose(leader, f"w{i}".encode())
        net.run(10)
        assert net.nodes[lonely].term == term
    campaigns = [m for m in net.sent if isinstance(m, VoteRequest) and m.src == lonely]
    assert campaigns
    assert all(m.pre_vote for m in campaigns)
    net.heal()
    net.run(30)
    assert net.leader() == leader
    assert {r.term for r in net.nodes.values()} == {term}
    assert net.machines[lonely] == net.machines[leader]


def test_without_pre_vote_a_rejoining_node_deposes_the_leader() -> None:
    """The control for the test above: the same partition without pre-vote does disrupt."""
    net, leader = settled_net(pre_vote=False)
    term = net.nodes[leader].term
    lonely = next(n for n in IDS3 if n != leader)
    net.isolate(lonely)
    net.run(60)
    assert net.nodes[lonely].term > term
    net.heal()
    net.run(60)
    assert net.nodes[leader].term > term


def test_check_quorum_isolated_leader_steps_down() -> None:
    net, leader = settled_net()
    net.isolate(leader)
    read = net.nodes[leader].read_index(1)
    net.handle(leader, read)
    ticks = net.run_until(lambda: net.nodes[leader].role == FOLLOWER, max_ticks=2 * LO)
    assert LO - 2 <= ticks <= LO  # the last answers came at most one heartbeat before
    assert net.failed[leader] == [1]
    assert net.nodes[leader].leader is None
    rest = [n for n in IDS3 if n != leader]
    net.run_until(lambda: any(net.nodes[n].role == LEADER for n in rest))


def test_without_check_quorum_an_isolated_leader_stays() -> None:
    net, leader = settled_net(check_quorum=False)
    net.isolate(leader)
    net.run(5 * HI)
    assert net.nodes[leader].role == LEADER


# --- reads -------------------------------------------------------------------------------------


def test_read_index_waits_for_a_majority_heartbeat_round() -> None:
    net, leader = settled_net()
    index = net.propose(leader, b"x")
    net.deliver()
    net.tick(leader)  # the follower the entry did not go to at once takes it
    net.deliver()
    raft = net.nodes[leader]
    ready = raft.read_index(1)
    net.handle(leader, ready)
    assert ready.reads == ()
    heartbeats = replies(ready, AppendRequest)
    assert len(heartbeats) == 2
    assert all(m.entries == () for m in heartbeats)
    net.deliver(lambda m: isinstance(m, AppendRequest))  # the followers hear, we do not yet
    assert net.reads[leader] == []
    net.deliver()
    assert net.reads[leader] == [(1, index)]


def test_reads_share_rounds_and_come_back_in_order() -> None:
    net, leader = settled_net()
    raft = net.nodes[leader]
    for read_id in range(5):
        net.handle(leader, raft.read_index(read_id))
    # One round in flight at a time: the first read's, then one for the other four.
    assert sum(isinstance(m, AppendRequest) for m in net.queue) == 2
    net.deliver()
    assert [read_id for read_id, _ in net.reads[leader]] == list(range(5))


def test_read_index_waits_for_a_commit_in_the_leaders_term() -> None:
    net = Net()
    net.start("n1", IDS3, hard_state=HardState(1, None), entries=log_of(1, 1))
    net.start("n2", IDS3)
    net.start("n3", IDS3)
    net.elect("n1")
    raft = net.nodes["n1"]
    net.handle("n1", raft.read_index(7))
    # Both followers reject appends after index 2 (their logs are empty), which still
    # acknowledges leadership; the retries that would fill their logs are held back.
    net.deliver(lambda m: isinstance(m, AppendResponse) or getattr(m, "prev_index", 0) == 2)
    acks = [m.probe for m in net.sent if isinstance(m, AppendResponse)]
    read_round = max(m.probe for m in net.sent if isinstance(m, AppendRequest))
    assert read_round in acks
    assert raft.commit_index == 0
    assert net.reads["n1"] == []
    net.deliver()
    assert raft.commit_index == 3
    assert net.reads["n1"] == [(7, 3)]  # the term's first entry: it covers all earlier commits


def test_read_index_on_a_follower_fails_at_once() -> None:
    net, leader = settled_net()
    follower = next(n for n in IDS3 if n != leader)
    assert net.nodes[follower].read_index(3) == Ready(failed_reads=(3,))


def test_stale_leader_cannot_serve_a_read() -> None:
    net, old = settled_net(check_quorum=False)
    net.isolate(old)
    rest = [n for n in IDS3 if n != old]
    net.run_until(lambda: any(net.nodes[n].role == LEADER for n in rest))
    new = next(n for n in rest if net.nodes[n].role == LEADER)
    net.handle(old, net.nodes[old].read_index(5))
    index = net.propose(new, b"newer")
    net.run(3 * HI)
    assert net.applied[new] >= index
    assert net.nodes[old].role == LEADER
    assert net.reads[old] == []
    net.heal()
    net.run(HI)
    assert net.nodes[old].role == FOLLOWER
    assert net.failed[old] == [5]
    assert net.reads[old] == []


# --- snapshots ---------------------------------------------------------------------------------


def test_lagging_follower_gets_a_snapshot_then_entries() -> None:
    net, leader = settled_net()
    lagging = next(n for n in IDS3 if n != leader)
    net.isolate(lagging)
    for i in range(30):
        net.propose(leader, f"w{i}".encode())
    net.run(2)
    for node_id in IDS3:
        if node_id != lagging:
            net.compact(node_id)
    meta = net.nodes[leader].snapshot
    assert meta is not None
    assert net.nodes[leader].first_index == meta.last_index + 1
    net.heal()
    net.run(1)
    net.run_until(lambda: net.nodes[lagging].commit_index >= meta.last_index)
    assert net.snapshot_offers == [(leader, lagging)]
    installs = [r.install_snapshot for n, r in net.trace if n == lagging and r.install_snapshot]
    assert installs == [meta]
    net.propose(leader, b"after")
    net.run(3)
    assert net.machines[lagging] == net.machines[leader]
    assert net.nodes[lagging].last_index == net.nodes[leader].last_index
    assert [net.applied[n] for n in IDS3] == [net.nodes[leader].last_index] * 3


def test_snapshot_is_offered_once_per_wait_not_every_tick() -> None:
    net, leader = settled_net()
    lagging = next(n for n in IDS3 if n != leader)
    net.isolate(lagging)
    net.propose(leader, b"x")
    net.run(2)
    net.compact(leader)
    net.heal()

    def run_losing_snapshots(ticks: int) -> None:
        for _ in range(ticks):
            net.tick()
            net.deliver(lambda m: not isinstance(m, SnapshotRequest))
            net.queue.clear()  # the held snapshots are lost

    run_losing_snapshots(2)  # the first heartbeat finds out the follower needs it
    assert net.snapshot_offers == [(leader, lagging)]
    run_losing_snapshots(LO - 3)  # a transfer takes time: not offered on every heartbeat
    assert net.snapshot_offers == [(leader, lagging)]
    run_losing_snapshots(2 * LO + 1)  # but offered again while no answer comes
    assert net.snapshot_offers == [(leader, lagging)] * 3


def test_snapshot_request_for_entries_the_follower_has() -> None:
    follower = Raft("n2", IDS3, entries=log_of(1, 1, 1), rng=random.Random(0))
    ready = follower.step(SnapshotRequest("n1", "n2", 1, SnapshotMeta(2, 1, IDS3)))
    assert ready.install_snapshot is None
    assert ready.truncate_from is None
    assert [e.index for e in ready.committed] == [1, 2]
    assert ready.messages == (SnapshotResponse("n2", "n1", 1, 2, incarnation=1),)
    ready = follower.step(SnapshotRequest("n1", "n2", 1, SnapshotMeta(1, 1, IDS3)))
    assert ready.install_snapshot is None
    assert ready.committed == ()
    assert ready.messages == (SnapshotResponse("n2", "n1", 1, 2, incarnation=1),)


def test_snapshot_replaces_a_conflicting_log() -> None:
    follower = Raft("n2", IDS3, entries=log_of(1, 1, 1, 1), rng=random.Random(0))
    meta = SnapshotMeta(3, 2, ("n1", "n2"))
    ready = follower.step(SnapshotRequest("n1", "n2", 2, meta))
    assert ready.install_snapshot == meta
    assert ready.truncate_from == 4
    assert ready.committed == ()
    assert follower.commit_index == follower.last_index == 3
    assert follower.voters == ("n1", "n2")
    assert follower.first_index == 4
    e4 = Entry(2, 4, EntryKind.COMMAND, b"next")
    ready = follower.step(AppendRequest("n1", "n2", 2, 3, 2, (e4,), 4, 1))
    assert ready.committed == (e4,)


def test_compact_checks_its_arguments() -> None:
    net, leader = settled_net()
    net.propose(leader, b"x")
    net.deliver()
    raft = net.nodes[leader]
    with pytest.raises(ValueError, match="not in the log"):
        raft.snapshot_meta(raft.last_index + 1)
    meta = raft.snapshot_meta(raft.commit_index)
    with pytest.raises(ValueError, match="does not describe"):
        raft.compact(replace(meta, last_term=meta.last_term + 1))
    with pytest.raises(ValueError, match="does not describe"):
        raft.compact(replace(meta, voters=("n1",)))
    raft.compact(meta)
    assert raft.snapshot == meta
    assert raft.first_index == meta.last_index + 1
    raft.compact(SnapshotMeta(1, 1, IDS3))  # older than the current snapshot: ignored
    assert raft.snapshot == meta


# --- membership --------------------------------------------------------------------------------


def test_add_a_fourth_node() -> None:
    net, leader = settled_net()
    for i in range(5):
        net.propose(leader, f"w{i}".encode())
    net.run(2)
    net.compact(leader)
    net.start("n4", IDS3)  # not in its own configuration yet: it must never campaign
    net.run(3 * HI)
    assert net.nodes["n4"].role == FOLLOWER
    assert not [m for m in net.sent if isinstance(m, VoteRequest) and m.src == "n4"]
    index, ready = net.nodes[leader].propose_config((*IDS3, "n4"))
    net.handle(leader, ready)
    assert net.nodes[leader].voters == (*IDS3, "n4")
    net.run(LO)
    assert net.nodes[leader].commit_index >= index
    assert net.nodes["n4"].voters == (*IDS3, "n4")
    assert net.machines["n4"] == net.machines[leader]
    assert (leader, "n4") in net.snapshot_offers
    # Four voters: a majority is three, so the leader and n4 alone commit nothing.
    net.isolate(*(n for n in IDS3 if n != leader))
    index = net.propose(leader, b"needs three")
    net.deliver()
    assert net.nodes[leader].commit_index < index
    net.heal()
    net.run(2)
    assert net.nodes[leader].commit_index == index


def test_a_learner_catches_up_by_snapshot_and_counts_for_nothing() -> None:
    net, leader = settled_net()
    for i in range(5):
        net.propose(leader, f"w{i}".encode())
    net.run(2)
    net.compact(leader)
    net.start("n4", IDS3, hard_state=NEW_MEMBER)
    net.handle(leader, net.nodes[leader].set_learners(("n4",)))
    net.run(LO)
    assert (leader, "n4") in net.snapshot_offers
    assert net.machines["n4"] == net.machines[leader]
    assert net.nodes[leader].match_index["n4"] == net.nodes[leader].last_index
    assert net.nodes[leader].learners == {"n4"}
    assert net.nodes[leader].voters == IDS3
    # Not a voter: the leader and the learner alone commit nothing.
    net.isolate(*(n for n in IDS3 if n != leader))
    index = net.propose(leader, b"needs two voters")
    net.tick(leader)  # a learner takes new entries at a tick
    net.deliver()
    assert net.nodes["n4"].last_index == index
    assert net.nodes[leader].commit_index < index
    net.heal()
    net.run(2)
    assert net.nodes[leader].commit_index == index
    # Made a voter, it stops being a learner; a new leader forgets learners.
    net.handle(leader, net.nodes[leader].propose_config((*IDS3, "n4"))[1])
    net.run(2)
    assert net.nodes[leader].learners == set()
    with pytest.raises(NotLeader):
        net.nodes[next(n for n in IDS3 if n != leader)].set_learners(("n5",))


def test_an_empty_learner_catches_up_by_snapshot_even_from_a_whole_log() -> None:
    net, leader = settled_net()
    for i in range(5):
        net.propose(leader, f"w{i}".encode())
    net.run(2)
    assert net.nodes[leader].snapshot is None
    net.start("n4", IDS3, hard_state=NEW_MEMBER)
    net.handle(leader, net.nodes[leader].set_learners(("n4",)))
    net.run(LO)
    assert (leader, "n4") in net.snapshot_offers
    assert net.nodes["n4"].snapshot is not None
    assert net.machines["n4"] == net.machines[leader]
    # A learner with entries of its own is brought up by entries as usual.
    offers = len(net.snapshot_offers)
    net.crash("n4")
    net.propose(leader, b"while away")
    net.run(2)
    net.restart("n4")
    net.run(LO)
    assert net.machines["n4"] == net.machines[leader]
    assert len(net.snapshot_offers) == offers


def test_learners_are_dropped_when_leadership_ends() -> None:
    net, leader = settled_net()
    net.start("n4", IDS3, hard_state=NEW_MEMBER)
    net.handle(leader, net.nodes[leader].set_learners(("n4",)))
    net.run(2)
    assert "n4" in net.nodes[leader].match_index
    net.isolate(leader)
    net.run_until(lambda: net.nodes[leader].role != LEADER)
    assert net.nodes[leader].learners == set()
    assert net.nodes[leader].match_index == {}


def test_remove_a_follower() -> None:
    net, leader = settled_net()
    gone, stay = (n for n in IDS3 if n != leader)
    config = tuple(sorted((leader, stay)))
    index, ready = net.nodes[leader].propose_config(config)
    net.handle(leader, ready)
    net.run(2)
    assert net.nodes[leader].commit_index >= index
    assert set(net.nodes[leader].match_index) == {stay}
    assert net.nodes[gone].voters == config
    # The removed node no longer counts: without `stay` nothing commits.
    net.isolate(stay)
    index = net.propose(leader, b"x")
    net.run(3)
    assert net.nodes[leader].commit_index < index
    before = len(net.sent)
    net.run(3 * HI)
    assert not [m for m in net.sent[before:] if isinstance(m, VoteRequest) and m.src == gone]


def test_remove_the_leader() -> None:
    net, leader = settled_net()
    rest = tuple(n for n in IDS3 if n != leader)
    before = len(net.sent)
    index, ready = net.nodes[leader].propose_config(rest)
    net.isolate(rest[0])
    net.handle(leader, ready)
    net.deliver()
    # The other remaining voter has it, but the leader does not count itself any more.
    assert net.nodes[rest[1]].last_index == index
    assert net.nodes[leader].commit_index < index
    assert net.nodes[leader].role == LEADER
    net.heal()
    net.tick(leader, times=2)
    net.deliver()
    assert net.nodes[leader].commit_index >= index
    assert net.nodes[leader].role == FOLLOWER
    net.run_until(lambda: any(net.nodes[n].role == LEADER for n in rest))
    net.run(3 * HI)
    assert net.nodes[leader].role == FOLLOWER
    assert not [m for m in net.sent[before:] if isinstance(m, VoteRequest) and m.src == leader]


def test_config_changes_are_refused_when_unsafe() -> None:
    net, leader = settled_net()
    raft = net.nodes[leader]
    follower = next(n for n in IDS3 if n != leader)
    with pytest.raises(NotLeader) as info:
        net.nodes[follower].propose_config((*IDS3, "n4"))
    assert info.value.leader == leader
    with pytest.raises(ValueError, match="exactly one"):
        raft.propose_config((*IDS3, "n4", "n5"))
    with pytest.raises(ValueError, match="exactly one"):
        raft.propose_config(("n1", "n2", "n4"))
    with pytest.raises(ValueError, match="exactly one"):
        raft.propose_config(IDS3)
    with pytest.raises(ValueError, match="repeated"):
        raft.propose_config(("n1", "n1", "n2", "n3"))
    net.handle(leader, raft.propose_config((*IDS3, "n4"))[1])
    with pytest.raises(ConfigChangePending):
        raft.propose_config(IDS3)
    net.run(3)
    raft.propose_config(IDS3)  # allowed once the first is committed


def test_new_leader_changes_config_only_after_committing_in_its_term() -> None:
    net = Net(IDS3)
    net.elect("n1")
    with pytest.raises(ConfigChangePending, match="its term"):
        net.nodes["n1"].propose_config((*IDS3, "n4"))
    net.deliver()
    net.nodes["n1"].propose_config((*IDS3, "n4"))


def test_config_reverts_when_its_entry_is_truncated() -> None:
    config = Entry(1, 2, EntryKind.CONFIG, encode_voters((*IDS3, "n4")))
    follower = Raft("n2", IDS3, entries=[entry(1, 1), config], rng=random.Random(0))
    assert follower.voters == (*IDS3, "n4")
    ready = follower.step(AppendRequest("n1", "n2", 2, 1, 1, (entry(2, 2),), 1, 1))
    assert ready.truncate_from == 2
    assert follower.voters == IDS3


def test_propose_on_a_follower_names_the_leader() -> None:
    net, leader = settled_net()
    follower = next(n for n in IDS3 if n != leader)
    with pytest.raises(NotLeader) as info:
        net.nodes[follower].propose(b"x")
    assert info.value.leader == leader


# --- restarts ----------------------------------------------------------------------------------


def test_restarted_follower_continues_from_its_disk() -> None:
    net, leader = settled_net()
    follower = next(n for n in IDS3 if n != leader)
    for i in range(5):
        net.propose(leader, f"a{i}".encode())
    net.run(2)
    net.crash(follower)
    for i in range(5):
        net.propose(leader, f"b{i}".encode())
    net.run(2)
    net.compact(leader)
    raft = net.restart(follower)
    assert raft.term == net.nodes[leader].term
    assert raft.last_index == 6
    net.run(5)
    assert net.machines[follower] == net.machines[leader]
    assert len(net.machines[leader]) == 10


def test_durable_state_machine_compacts_after_a_restart() -> None:
    """A state machine that survives restarts may be ahead of the restarted core's commit
    index: a snapshot at its applied index is still a committed position."""
    net, leader = settled_net()
    for i in range(3):
        net.propose(leader, f"w{i}".encode())
    net.run(4)
    follower = next(n for n in IDS3 if n != leader)
    applied = net.applied[follower]
    raft = Raft(
        follower,
        IDS3,
        hard_state=net.disks[follower].hard_state,
        entries=net.disks[follower].entries,
        rng=random.Random(0),
    )
    assert raft.commit_index == 0
    raft.compact(raft.snapshot_meta(applied))
    assert (raft.commit_index, raft.first_index) == (applied, applied + 1)
    entry = Entry(raft.term, applied + 1, EntryKind.COMMAND, b"next")
    ready = raft.step(
        AppendRequest(
            leader, follower, raft.term, applied, raft.last_term, (entry,), applied + 1, 9
        )
    )
    assert ready.committed == (entry,)  # nothing before the snapshot comes again


def test_restarted_leader_rejoins_as_follower() -> None:
    net, leader = settled_net()
    net.propose(leader, b"x")
    net.run(2)
    term = net.nodes[leader].term
    net.crash(leader)
    net.run_until(lambda: sum(net.nodes[n].role == LEADER for n in IDS3 if n != leader) == 1)
    raft = net.restart(leader)
    assert raft.role == FOLLOWER
    assert raft.term == term
    assert raft.commit_index == 0
    net.run(5)
    assert raft.term > term
    assert raft.leader != leader
    assert net.machines[leader] == net.machines[raft.leader or ""]


def test_vote_survives_a_restart() -> None:
    net = Net()
    net.start("n1", IDS3)
    net.handle("n1", net.nodes["n1"].step(VoteRequest("n2", "n1", 5, 0, 0, False)))
    raft = net.restart("n1")
    ready = raft.step(VoteRequest("n3", "n1", 5, 0, 0, False))
    assert ready.messages == (VoteResponse("n1", "n3", 5, False, False),)
    ready = raft.step(VoteRequest("n2", "n1", 5, 0, 0, False))
    assert ready.messages == (VoteResponse("n1", "n2", 5, True, False),)


def test_constructor_rejects_a_gap_in_the_log() -> None:
    with pytest.raises(ValueError, match="contiguously"):
        Raft("n1", IDS3, entries=[entry(1, 1), entry(1, 3)], rng=random.Random(0))
    with pytest.raises(ValueError, match="contiguously"):
        Raft(
            "n1",
            IDS3,
            snapshot=SnapshotMeta(5, 1, IDS3),
            entries=[entry(1, 7)],
            rng=random.Random(0),
        )


# --- chaos -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_random_partitions_crashes_and_compactions_stay_safe(seed: int) -> None:
    rng = random.Random(seed)
    net = Net(IDS5, seed=seed)
    proposed = 0
    for _ in range(400):
        roll = rng.random()
        if roll < 0.03:
            net.heal()
            net.isolate(*rng.sample(IDS5, rng.randint(1, 2)))
        elif roll < 0.05:
            net.heal()
        elif roll < 0.06:
            victim = rng.choice(IDS5)
            net.crash(victim)
            net.queue = deque(m for m in net.queue if m.dst != victim)
            net.restart(victim)
        elif roll < 0.08:
            node = rng.choice(IDS5)
            if net.applied[node] > net.nodes[node].first_index:
                net.compact(node)
        for node_id, raft in net.nodes.items():
            if raft.role == LEADER and rng.random() < 0.3:
                proposed += 1
                net.propose(node_id, f"p{proposed}".encode())
        net.run(1)
    net.heal()
    net.run(3 * HI)
    leader = net.leader()
    net.propose(leader, b"last")
    net.run(5)
    assert all(net.machines[n] == net.machines[leader] for n in IDS5)
    assert b"last" in net.machines[leader].values()
    assert len(net.chosen) > 50


# --- values and wire ---------------------------------------------------------------------------


def test_ready_merge_acts_like_two_readys_in_sequence() -> None:
    e1, e2, e3 = log_of(1, 1, 1)
    x2 = Entry(2, 2, EntryKind.COMMAND, b"x")
    meta = SnapshotMeta(5, 2, IDS3)
    first = Ready(hard_state=HardState(1, "a"), append=(e1, e2, e3), committed=(e1,))
    second = Ready(hard_state=HardState(2, None), truncate_from=2, append=(x2,), reads=((1, 1),))
    merged = first.merge(second)
    assert merged.hard_state == HardState(2, None)
    assert merged.truncate_from == 2
    assert merged.append == (e1, x2)
    assert merged.committed == (e1,)
    assert merged.reads == ((1, 1),)
    assert Ready(truncate_from=3).merge(Ready(truncate_from=5)).truncate_from == 3
    installed = first.merge(Ready(install_snapshot=meta, committed=()))
    assert installed.install_snapshot == meta
    assert installed.committed == ()
    offers = Ready(send_snapshot=("a",)).merge(Ready(send_snapshot=("a", "b")))
    assert offers.send_snapshot == ("a", "b")


def test_an_empty_ready_merged_either_side_changes_nothing() -> None:
    """Every call of the core merges what it produced into an empty Ready: no new one."""
    (e1,) = log_of(1)
    ready = Ready(hard_state=HardState(1, "a"), truncate_from=1, append=(e1,), reads=((1, 1),))
    assert ready.merge(Ready()) is ready
    assert Ready().merge(ready) is ready
    assert EMPTY_READY.merge(Ready()) == Ready()


def test_voters_encoding() -> None:
    assert SnapshotMeta(1, 1, ("n3", "n1")).voters == ("n1", "n3")
    with pytest.raises(ValueError, match="repeated"):
        SnapshotMeta(1, 1, ("n1", "n1"))
    assert encode_voters(("n2", "n1")) == b"n1\nn2"
    assert decode_voters(b"n1\nn2") == ("n1", "n2")
    assert decode_voters(encode_voters(())) == ()
    for bad, error in (
        (b"n2\nn1", "not sorted"),
        (b"n1\nn1", "repeated"),
        (b"n1\n", "bad node id"),
        (b"\xff", "UTF-8"),
    ):
        with pytest.raises(ValueError, match=error):
            decode_voters(bad)
    with pytest.raises(ValueError, match="bad node id"):
        encode_voters(("a\nb",))


SAMPLES: list[Message] = [
    VoteRequest("n1", "n2", 3, 10, 2, True),
    VoteResponse("n2", "n1", 3, False, False),
    AppendRequest(
        "n1",
        "n2",
        3,
        4,
        2,
        (entry(2, 5), Entry(3, 6, EntryKind.CONFIG, b"n1\nn2"), Entry(3, 7, EntryKind.NOOP, b"")),
        4,
        17,
    ),
    AppendRequest("n1", "n2", 3, 0, 0, (), 0, 0),
    AppendResponse("n2", "n1", 3, False, 0, 3, 2, 17),
    SnapshotRequest("n1", "n2", 3, SnapshotMeta(40, 3, IDS3)),
    SnapshotResponse("n2", "n1", 3, 40),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_wire_round_trip(message: Message) -> None:
    assert message_from_wire(message_to_wire(message)) == message
    assert wire_trip(message) == message
    assert message_from_wire(tuple(message_to_wire(message))) == message


def _mutate(message: Message, position: int, value: object) -> list[object]:
    wire = message_to_wire(message)
    wire[position] = value
    return wire


APPEND, SNAP = SAMPLES[2], SAMPLES[5]
BAD_WIRE: list[object] = [
    None,
    b"",
    [],
    {"tag": 1},
    [0, "n1", "n2", 1],
    [99, "n1", "n2", 1],
    [True, "n1", "n2", 3, 10, 2, True],
    message_to_wire(SAMPLES[0])[:-1],
    [*message_to_wire(SAMPLES[0]), 1],
    _mutate(SAMPLES[0], 1, ""),
    _mutate(SAMPLES[0], 1, b"n1"),
    _mutate(SAMPLES[0], 2, "a\nb"),
    _mutate(SAMPLES[0], 3, -1),
    _mutate(SAMPLES[0], 3, 2**63),
    _mutate(SAMPLES[0], 3, 1.0),
    _mutate(SAMPLES[0], 3, True),
    _mutate(SAMPLES[0], 6, 1),
    _mutate(APPEND, 6, [[2, 5, 1]]),
    _mutate(APPEND, 6, [[2, 5, 7, b""]]),
    _mutate(APPEND, 6, [[2, 5, 1, "text"]]),
    _mutate(APPEND, 6, [[2, 6, 1, b""]]),  # gap after prev_index 4
    _mutate(APPEND, 6, [[1, 5, 1, b""]]),  # term below prev_term
    _mutate(APPEND, 6, [[4, 5, 1, b""]]),  # term above the leader's
    _mutate(APPEND, 6, [[2, 5, 2, b"n2\nn1"]]),  # CONFIG data not sorted
    _mutate(APPEND, 6, "entries"),
    _mutate(APPEND, 5, 4),  # prev_term above term
    _mutate(SAMPLES[3], 5, 1),  # prev_term without prev_index
    _mutate(SNAP, 4, [40, 3]),
    _mutate(SNAP, 4, [40, 3, ["n2", "n1"]]),
    _mutate(SNAP, 4, [40, 3, [7]]),
    _mutate(SNAP, 4, [0, 3, ["n1"]]),
    _mutate(SNAP, 4, [40, 4, ["n1"]]),
]


@pytest.mark.parametrize("wire", BAD_WIRE, ids=range(len(BAD_WIRE)))
def test_malformed_wire_input_is_refused(wire: object) -> None:
    with pytest.raises(ValueError, match="malformed Raft message"):
        message_from_wire(wire)


def test_messages_for_another_node_are_ignored() -> None:
    raft = Raft("n1", IDS3, rng=random.Random(0))
    assert raft.step(VoteRequest("n2", "n3", 5, 0, 0, False)) == Ready()
    assert raft.term == 0
    assert raft.status()["role"] == FOLLOWER


# --- leader lease ----------------------------------------------------------------------------


def test_a_leased_leader_serves_reads_without_a_round() -> None:
    net, leader = settled_net(lease_margin=3)
    index = net.propose(leader, b"x")
    net.deliver()
    raft = net.nodes[leader]
    net.tick(leader, times=2)  # a heartbeat round that a majority acknowledges
    net.deliver()
    ready = raft.read_index(7)
    assert ready.reads == ((7, raft.commit_index),)
    assert raft.commit_index >= index
    assert replies(ready, AppendRequest) == []


def test_a_lease_expires_without_acknowledgements() -> None:
    net, leader = settled_net(lease_margin=3)
    raft = net.nodes[leader]
    net.tick(leader, times=2)
    net.deliver()
    assert raft.read_index(1).reads != ()
    for peer in IDS3:
        if peer != leader:
            net.crash(peer)
    # lo - margin ticks after the last acknowledged round started, the lease is gone: a read
    # needs a round again, which nobody answers.
    for _ in range(8):
        net.handle(leader, raft.tick())
    net.deliver()
    assert raft.role == LEADER  # check-quorum has not deposed it yet ...
    ready = raft.read_index(2)
    assert ready.reads == ()  # ... but its lease is over


def test_no_lease_without_check_quorum() -> None:
    net, leader = settled_net(lease_margin=3, check_quorum=False)
    raft = net.nodes[leader]
    net.tick(leader, times=2)
    net.deliver()
    assert raft.read_index(1).reads == ()


def test_an_append_request_carries_at_most_a_few_mib_of_entries() -> None:
    net, leader = settled_net()
    raft = net.nodes[leader]
    behind = next(n for n in IDS3 if n != leader)
    net.crash(behind)
    for _ in range(3):
        net.propose(leader, b"x" * (3 * 1024 * 1024))
    net.deliver()
    net.restart(behind)
    sizes: list[int] = []

    def measure(message: Message) -> bool:
        if isinstance(message, AppendRequest) and message.dst == behind and message.entries:
            sizes.append(sum(len(e.data) for e in message.entries))
        return True

    for _ in range(20):
        net.handle(leader, raft.tick())
        net.deliver(measure)
    assert sizes, "the follower that was behind got no entries"
    assert max(sizes) <= 4 * 1024 * 1024
    assert net.nodes[behind].last_index == raft.last_index  # it caught up all the same
