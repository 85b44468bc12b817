"""Raft consensus, sans-IO: the rules of the paper, driven by calls, with no clock, socket or disk.

The caller (the trio shell) drives a `Raft` with `tick()`, `step(message)`, `propose(...)` and
`read_index(...)`; every call answers with a `Ready` saying what to persist, send and apply, in
that order (see `Ready`). Because persistent state is reported in the Ready of the call that
changed it, and persisted before that Ready's messages go out, a vote or an acknowledgement never
leaves a node before the state it promises is durable.

Rules followed, with their sources (Ongaro & Ousterhout 2014, Figure 2 and §5-§7; Ongaro's
thesis): randomized election timeouts; pre-vote and check-quorum with leader stickiness (thesis
§9.6, §4.2.3); a NOOP entry at the start of each term, so entries of earlier terms commit only
through an entry of the current term (§5.4.2); conflict hints for fast back-off; ReadIndex reads
(thesis §6.4); snapshots and InstallSnapshot (§7); single-server membership changes that take
effect on append, with the erratum's rule that a leader first commits an entry of its own term
(thesis §4.2.1).
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from ringfs.node.raft.memlog import InMemoryLog
from ringfs.node.raft.messages import (
    NEW_MEMBER,
    AppendRequest,
    AppendResponse,
    Entry,
    EntryKind,
    HardState,
    Message,
    NodeId,
    Ready,
    SnapshotMeta,
    SnapshotRequest,
    SnapshotResponse,
    VoteRequest,
    VoteResponse,
    check_node_id,
    decode_voters,
    encode_voters,
    message_from_wire,
    message_to_wire,
)
from ringfs.node.raft.progress import Peers, Progress

__all__ = [
    "CANDIDATE",
    "FOLLOWER",
    "INITIAL_HARD_STATE",
    "NEW_MEMBER",
    "LEADER",
    "PRE_CANDIDATE",
    "AppendRequest",
    "AppendResponse",
    "ConfigChangePending",
    "Entry",
    "EntryKind",
    "HardState",
    "Message",
    "NodeId",
    "NotLeader",
    "Raft",
    "Ready",
    "SnapshotMeta",
    "SnapshotRequest",
    "SnapshotResponse",
    "VoteRequest",
    "VoteResponse",
    "decode_voters",
    "encode_voters",
    "message_from_wire",
    "message_to_wire",
]

FOLLOWER = "follower"
PRE_CANDIDATE = "pre_candidate"
CANDIDATE = "candidate"
LEADER = "leader"
#: A node that never voted and knows no term.
INITIAL_HARD_STATE = HardState(0, None)


class NotLeader(Exception):
    """Only the leader accepts proposals; `leader` names it when known, for a redirect."""

    def __init__(self, leader: NodeId | None) -> None:
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader


class ConfigChangePending(RuntimeError):
    """A configuration change must wait: one is uncommitted, or the leader's term has not
    committed an entry yet (a change before that can lose a committed configuration)."""


class _Why(enum.Enum):
    """Why the leader is sending to a follower, which decides whether an empty message goes."""

    HEARTBEAT = enum.auto()
    RETRY = enum.auto()
    NEW_ENTRIES = enum.auto()


@dataclass(frozen=True, slots=True)
class _PendingRead:
    read_id: int
    index: int
    round: int


class Raft:
    """One member of a Raft group. Not thread-safe; every method returns at once.

    `entries` is the persisted log after `snapshot` (entries the snapshot covers are skipped);
    `voters` is the initial configuration, used until the snapshot or the log holds one. A node
    outside the configuration (a server waiting to be added) never campaigns.
    Raises ValueError on inconsistent arguments.
    """

    def __init__(
        self,
        node_id: NodeId,
        voters: tuple[NodeId, ...],
        *,
        hard_state: HardState = INITIAL_HARD_STATE,
        snapshot: SnapshotMeta | None = None,
        entries: Sequence[Entry] = (),
        rng: random.Random,
        election_ticks: tuple[int, int] = (10, 20),
        heartbeat_ticks: int = 2,
        max_entries_per_message: int = 64,
        pre_vote: bool = True,
        check_quorum: bool = True,
        lease_margin: int | None = 3,
        incarnation: int = 1,
        boot_quiet: bool = True,
    ) -> None:
        """`lease_margin`: reads are served without a heartbeat round for `lo - lease_margin`
        ticks after the start of a round a majority acknowledged (None: never). Safe while
        clocks run at rates within that margin of each other (see `_leased`).

        `incarnation` tells this start of the member from its others: it must be higher than
        any it had before (a leader ignores answers from a lower one). `boot_quiet`: refuse
        every vote for `lo` ticks, as if a leader had just been heard: the member may have
        lost state, and a leader's lease counts on its silence (see `_on_vote_request`).
        """
        lo, hi = election_ticks
        if not 1 <= heartbeat_ticks < lo < hi or max_entries_per_message < 1:
            raise ValueError("need 1 <= heartbeat_ticks < lo < hi and max_entries_per_message >= 1")
        self._id = check_node_id(node_id)
        self._rng, self._lo, self._hi = rng, lo, hi
        self._heartbeat_ticks, self._max_entries = heartbeat_ticks, max_entries_per_message
        self._pre_vote, self._check_quorum = pre_vote, check_quorum
        # A lease needs followers that refuse votes while they hear a leader (check-quorum).
        lease = lo - lease_margin if lease_margin is not None and check_quorum else 0
        self._lease_ticks = max(lease, 0)
        self._round_ticks: dict[int, int] = {}
        self._term, self._voted_for = hard_state.term, hard_state.voted_for
        self._recovering = hard_state.recovering
        self._reported = hard_state
        self._incarnation = incarnation
        # Ticks left in which this member, just started, grants no vote.
        self._booting = lo if boot_quiet else 0
        initial = decode_voters(encode_voters(tuple(sorted(voters))))
        self._log = InMemoryLog(initial, snapshot, entries)
        self._commit = self._applied = self._log.base
        self._role = FOLLOWER
        self._leader: NodeId | None = None
        self._elapsed = self._timeout = self._since_leader = 0
        self._reset_timer()
        self._votes: dict[NodeId, bool] = {}
        self._peers = Peers(self._id)
        self._term_start = self._probe = self._heartbeat_elapsed = self._now = 0
        self._reads: deque[_PendingRead] = deque()
        self._out = Ready()

    # --- read-only state ----------------------------------------------------------------------

    @property
    def node_id(self) -> NodeId:
        return self._id

    @property
    def role(self) -> str:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def leader(self) -> NodeId | None:
        return self._leader

    @property
    def commit_index(self) -> int:
        return self._commit

    @property
    def first_index(self) -> int:
        return self._log.base + 1

    @property
    def last_index(self) -> int:
        return self._log.last_index

    @property
    def last_term(self) -> int:
        return self._log.last_term

    @property
    def voters(self) -> tuple[NodeId, ...]:
        """The configuration in force: the latest CONFIG entry in the log, even uncommitted."""
        return self._log.voters

    @property
    def snapshot(self) -> SnapshotMeta | None:
        return self._log.snapshot

    @property
    def match_index(self) -> dict[NodeId, int]:
        """Each follower's replicated prefix, as the leader knows it; empty on other roles."""
        return {peer: p.match for peer, p in self._peers.progress.items()}

    def status(self) -> dict[str, object]:
        """A snapshot of this node's state, for status pages and logs."""
        return {
            "node_id": self._id,
            "term": self._term,
            "role": self._role,
            "leader": self._leader,
            "voters": list(self.voters),
            "commit_index": self._commit,
            "last_index": self.last_index,
            "snapshot_index": self._log.base,
            "match_index": self.match_index,
            "recovering": self._recovering,
        }

    # --- calls ---------------------------------------------------------------------------------

    def tick(self) -> Ready:
        """Advance the logical clock by one tick: elections, heartbeats, check-quorum."""
        if self._role == LEADER:
            self._tick_leader()
        else:
            self._elapsed += 1
            self._since_leader += 1
            self._booting = max(0, self._booting - 1)
            if self._elapsed >= self._timeout:
                self._campaign()
        return self._take()

    def step(self, message: Message) -> Ready:
        """Handle a message from another node; one addressed elsewhere is ignored."""
        if message.dst != self._id or message.src == self._id:
            return Ready()
        match message:
            case VoteRequest():
                self._on_vote_request(message)
            case VoteResponse():
                self._on_vote_response(message)
            case AppendRequest():
                self._on_append_request(message)
            case AppendResponse():
                self._on_append_response(message)
            case SnapshotRequest():
                self._on_snapshot_request(message)
            case SnapshotResponse():
                self._on_snapshot_response(message)
        return self._take()

    def propose(self, *commands: bytes) -> tuple[int, Ready]:
        """Append COMMAND entries, one per command, and start replicating them; returns the
        first one's index (the others follow it in order).

        Commands proposed together travel in the same AppendRequests and share one log write.
        Raises NotLeader on any other role. The entries may still be lost if leadership is.
        """
        self._require_leader()
        if not commands:
            raise ValueError("nothing to propose")
        return self._propose(EntryKind.COMMAND, commands)

    def propose_config(self, voters: tuple[NodeId, ...]) -> tuple[int, Ready]:
        """Append a CONFIG entry adding or removing exactly one voter; returns its index.

        Raises NotLeader on other roles, ValueError unless the change is one voter,
        ConfigChangePending while an earlier change is uncommitted or before this leader has
        committed an entry of its own term.
        """
        self._require_leader()
        new = decode_voters(encode_voters(tuple(sorted(voters))))
        if not new or len(set(new) ^ set(self.voters)) != 1:
            raise ValueError(f"{self.voters} -> {new} does not add or remove exactly one voter")
        if self._log.config_index > self._commit:
            raise ConfigChangePending(f"configuration change {self._log.config_index} uncommitted")
        if self._commit < self._term_start:
            raise ConfigChangePending("this leader has not committed an entry of its term yet")
        return self._propose(EntryKind.CONFIG, (encode_voters(new),))

    def read_index(self, read_id: int) -> Ready:
        """Start a linearizable read (ReadIndex); it comes back in `Ready.reads` with the index
        the state machine must reach first, or in `Ready.failed_reads` if this node is not (or
        stops being) the leader."""
        if self._role != LEADER:
            self._emit(Ready(failed_reads=(read_id,)))
            return self._take()
        if self._commit >= self._term_start and self._leased():
            # No other leader can exist yet: the state at commit is the latest there is.
            self._emit(Ready(reads=((read_id, self._commit),)))
            return self._take()
        # Everything committed is at most the term's first entry when that is not committed yet.
        index = max(self._commit, self._term_start)
        self._reads.append(_PendingRead(read_id, index, self._probe + 1))
        self._serve_reads()
        return self._take()

    def snapshot_meta(self, index: int) -> SnapshotMeta:
        """The metadata for a snapshot of a state machine that has applied `index`.

        Raises ValueError if `index` is not in the log (nor the end of the snapshot).
        """
        term = self._log.term_at(index)
        if term is None:
            raise ValueError(f"index {index} is not in the log")
        return SnapshotMeta(index, term, self._log.config_at(index))

    def compact(self, meta: SnapshotMeta) -> None:
        """Forget the entries the caller's snapshot at `meta.last_index` covers.

        The state machine applied that index, so it is committed: a node that restarted and has
        not relearned its commit index yet takes it from there (and does not report the entries
        it covers). Raises ValueError if `meta` does not describe this log (`snapshot_meta`
        builds one that does). A snapshot older than the current one is ignored.
        """
        if meta.last_index <= self._log.base:
            return
        if meta != self.snapshot_meta(meta.last_index):
            raise ValueError(f"{meta} does not describe this log")
        self._commit = max(self._commit, meta.last_index)
        self._applied = max(self._applied, meta.last_index)
        self._log.compact(meta)

    # --- log -----------------------------------------------------------------------------------

    def _propose(self, kind: EntryKind, payloads: Sequence[bytes]) -> tuple[int, Ready]:
        first = self.last_index + 1
        self._append(
            tuple(Entry(self._term, first + i, kind, data) for i, data in enumerate(payloads))
        )
        self._replicate_all(_Why.NEW_ENTRIES)
        self._maybe_commit()
        return first, self._take()

    def _append_local(self, kind: EntryKind, data: bytes) -> int:
        entry = Entry(self._term, self.last_index + 1, kind, data)
        self._append((entry,))
        return entry.index

    def _append(self, entries: Sequence[Entry]) -> None:
        self._log.append(entries)
        self._emit(Ready(append=tuple(entries)))
        self._sync_progress()

    def _truncate(self, index: int) -> None:
        assert index > self._commit, "committed entries are never truncated"
        self._log.truncate(index)
        self._emit(Ready(truncate_from=index))

    def _sync_progress(self) -> None:
        """The leader replicates to the voters, and to the previous configuration's until the
        change commits, so that a removed node learns it is out and stays quiet."""
        if self._role != LEADER:
            return
        peers = set(self.voters)
        if self._log.config_index > self._commit:
            peers.update(self._log.config_at(self._log.config_index - 1))
        self._peers.sync(peers, self.last_index + 1, self._now)

    # --- roles and timers ------------------------------------------------------------------------

    def _reset_timer(self) -> None:
        self._elapsed = 0
        if self.voters == (self._id,):
            # A lone voter has nobody to wait for or compete with: campaign at the next tick.
            self._timeout = 1
        else:
            self._timeout = self._rng.randrange(self._lo, self._hi)

    def _heard_from_leader(self) -> bool:
        """A current leader exists as far as we know (thesis §4.2.3, §9.6)."""
        if self._role == LEADER:
            return True
        return self._leader is not None and self._since_leader < self._lo

    def _become_follower(self, term: int, leader: NodeId | None) -> None:
        if term > self._term:
            self._term, self._voted_for = term, None
        was, self._role, self._leader = self._role, FOLLOWER, leader
        if was == LEADER:
            self._peers.sync((), 0, 0)
            self._emit(Ready(failed_reads=tuple(r.read_id for r in self._reads)))
            self._reads.clear()
        if was != FOLLOWER:
            self._reset_timer()

    def _campaign(self) -> None:
        self._reset_timer()
        self._leader = None
        if self._id not in self.voters or (self._careful() and self.last_index):
            # A member that may lack committed entries must not lead (it could win the votes
            # of members as far behind as it is).
            return
        if self._pre_vote:
            self._role, self._votes = PRE_CANDIDATE, {self._id: True}
            self._ask_votes(pre_vote=True)
        else:
            self._become_candidate()

    def _become_candidate(self) -> None:
        self._reset_timer()
        self._term, self._voted_for = self._term + 1, self._id
        self._role, self._leader, self._votes = CANDIDATE, None, {self._id: True}
        self._ask_votes(pre_vote=False)

    def _ask_votes(self, *, pre_vote: bool) -> None:
        if self._won():
            self._win()
            return
        term = self._term + 1 if pre_vote else self._term
        for peer in self.voters:
            if peer != self._id:
                self._send(
                    VoteRequest(self._id, peer, term, self.last_index, self.last_term, pre_vote)
                )

    def _won(self) -> bool:
        return sum(1 for v in self.voters if self._votes.get(v)) > len(self.voters) // 2

    def _win(self) -> None:
        if self._role == PRE_CANDIDATE:
            self._become_candidate()
            return
        # Only a group that never committed anything elects a recovering member (see _careful).
        self._role, self._leader, self._recovering = LEADER, self._id, False
        self._heartbeat_elapsed = 0
        self._round_ticks.clear()
        self._sync_progress()
        self._term_start = self._append_local(EntryKind.NOOP, b"")
        self._start_round()
        self._maybe_commit()

    def _tick_leader(self) -> None:
        self._now += 1
        if self._check_quorum and not self._peers.active(self.voters, self._now - self._lo):
            # No majority answered for a minimum election timeout (thesis §6.2).
            self._become_follower(self._term, None)
            return
        for p in self._peers.progress.values():
            p.snapshot_wait = max(0, p.snapshot_wait - 1)
        self._heartbeat_elapsed += 1
        if self._heartbeat_elapsed >= self._heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._start_round()

    def _require_leader(self) -> None:
        if self._role != LEADER:
            raise NotLeader(self._leader)

    # --- elections -------------------------------------------------------------------------------

    def _on_vote_request(self, m: VoteRequest) -> None:
        if self._booting:
            # Just started: whatever it granted before may be lost, and a leader's lease
            # relies on no vote coming from it within `lo` ticks of its last heartbeat.
            return
        heard = self._heard_from_leader()
        if self._check_quorum and heard and (m.pre_vote or m.term > self._term):
            return  # leader stickiness: not even the term moves
        if m.pre_vote:
            granted = not heard and self._would_vote(m)
            self._send(VoteResponse(self._id, m.src, self._term, granted, True))
            return
        if m.term > self._term:
            self._become_follower(m.term, None)
        granted = m.term == self._term and self._would_vote(m)
        if granted:
            self._voted_for = m.src
            self._reset_timer()
            if self._recovering and not m.last_log_index:
                # Two empty logs: a new group electing its first leader (a member loses its
                # storage only while the others hold entries). It has nothing to recover.
                self._recovering = False
        self._send(VoteResponse(self._id, m.src, self._term, granted, False))

    def _would_vote(self, m: VoteRequest) -> bool:
        """Would a vote at `m.term` go to `m.src`: one vote per term, for an up-to-date log."""
        free = m.term > self._term or self._voted_for in (None, m.src)
        up_to_date = self._log.is_up_to_date(m.last_log_index, m.last_log_term)
        if self._careful() and (m.last_log_index or self.last_index):
            # It may have acknowledged entries, now lost, that made a commit: only a group
            # that never committed anything (every log empty) gets its vote.
            return False
        return m.term >= self._term and free and up_to_date

    def _careful(self) -> bool:
        """Recovering, in a group where its vote could elect a leader lacking a committed
        entry. With one or two voters, every commit is on every voter that could win."""
        return self._recovering and len(self.voters) > 2

    def _on_vote_response(self, m: VoteResponse) -> None:
        if m.pre_vote and m.granted:
            # It carries the voter's term, which may be anything up to ours + 1.
            if self._role == PRE_CANDIDATE:
                self._count_vote(m)
        elif m.term > self._term:
            self._become_follower(m.term, None)
        elif m.term == self._term and self._role == (PRE_CANDIDATE if m.pre_vote else CANDIDATE):
            self._count_vote(m)

    def _count_vote(self, m: VoteResponse) -> None:
        self._votes[m.src] = self._votes.get(m.src, False) or m.granted
        if self._won():
            self._win()

    # --- replication: follower side ----------------------------------------------------------

    def _follow(self, term: int, leader: NodeId) -> None:
        self._become_follower(term, leader)
        if self._voted_for is None:
            # This term has its leader: never vote for another in it, even if a vote cast in
            # it was lost with this member's storage.
            self._voted_for = leader
        self._reset_timer()
        self._since_leader = 0

    def _on_append_request(self, m: AppendRequest) -> None:
        if m.term < self._term:
            self._answer_append(m, False, 0, 0, 0)
            return
        self._follow(m.term, m.src)
        prev_index, prev_term, entries = m.prev_index, m.prev_term, m.entries
        if prev_index < self._log.base:
            # The snapshot holds these: committed, so identical to the leader's.
            entries = entries[self._log.base - prev_index :]
            prev_index, prev_term = self._log.base, self._log.base_term
        ours = self._log.term_at(prev_index)
        if ours != prev_term:
            self._reject_append(m, prev_index, ours)
            return
        conflict = self._first_conflict(entries)
        if conflict is not None and conflict.index <= self._commit:
            # No leader contradicts a committed entry: this request is not a leader's.
            self._warn(f"dropped an AppendRequest from {m.src} rewriting entry {conflict.index}")
            return
        self._merge(entries, conflict)
        last_new = prev_index + len(entries)
        self._commit = max(self._commit, min(m.commit, last_new))
        if self._recovering and m.incarnation == self._incarnation and self._caught_up(m):
            self._recovering = False
        self._answer_append(m, True, last_new, 0, 0)

    def _caught_up(self, m: AppendRequest) -> bool:
        """It holds the leader's log up to the leader's commit index, and that entry is of the
        leader's term. The leader knows this incarnation (it counts no acknowledgement from an
        earlier one), so it committed everything it counted from those before it sent `m`;
        and an entry of its own term is committed only after everything of earlier terms."""
        return self._commit >= m.commit and self._log.term_at(m.commit) == m.term

    def _answer_append(
        self, m: AppendRequest, success: bool, match: int, conflict_index: int, conflict_term: int
    ) -> None:
        self._send(
            AppendResponse(
                self._id,
                m.src,
                self._term,
                success,
                match,
                conflict_index,
                conflict_term,
                m.probe,
                self._incarnation,
            )
        )

    def _reject_append(self, m: AppendRequest, prev_index: int, ours: int | None) -> None:
        """Hints for the leader: our term at prev_index and where that term starts, or the end
        of our log if it is shorter."""
        term = ours or 0
        index = self._log.first_index_of_term(term) if term else self.last_index + 1
        self._answer_append(m, False, 0, index, term)

    def _first_conflict(self, entries: Sequence[Entry]) -> Entry | None:
        """The first of `entries` whose term differs from ours at its index."""
        for entry in entries:
            if entry.index > self.last_index:
                return None
            if self._log.term_at(entry.index) != entry.term:
                return entry
        return None

    def _merge(self, entries: Sequence[Entry], conflict: Entry | None) -> None:
        """Append what is new; truncate only from the first entry that conflicts (a stale or
        duplicated request must not erase entries that came after it)."""
        if conflict is not None:
            self._truncate(conflict.index)
        new = [entry for entry in entries if entry.index > self.last_index]
        if new:
            self._append(new)

    def _on_snapshot_request(self, m: SnapshotRequest) -> None:
        if m.term < self._term:
            self._answer_snapshot(m)
            return
        self._follow(m.term, m.src)
        meta = m.meta
        news = meta.last_index > self._commit
        if news and self._log.term_at(meta.last_index) == meta.last_term:
            # Our log already holds that prefix: commit it, keeping what follows.
            self._commit = meta.last_index
        elif news:
            # Entries past the snapshot do not match the leader's log: drop them. The snapshot
            # covers the others; the caller drops those when it installs it.
            if self.last_index > meta.last_index:
                self._emit(Ready(truncate_from=meta.last_index + 1))
            self._log.reset(meta)
            self._commit = self._applied = meta.last_index
            self._emit(Ready(install_snapshot=meta))
        self._answer_snapshot(m)

    def _answer_snapshot(self, m: SnapshotRequest) -> None:
        self._send(SnapshotResponse(self._id, m.src, self._term, self._commit, self._incarnation))

    # --- replication: leader side ------------------------------------------------------------

    def _start_round(self) -> None:
        """A heartbeat round: every follower hears from us, tagged with a new probe."""
        self._probe += 1
        self._round_ticks[self._probe] = self._now
        self._replicate_all(_Why.HEARTBEAT)

    def _replicate_all(self, why: _Why) -> None:
        for peer in self._peers.progress:
            self._replicate(peer, why)

    def _replicate(self, peer: NodeId, why: _Why) -> None:
        p = self._peers.progress[peer]
        if p.next <= self._log.base:
            # The entries it needs are compacted away: it needs the snapshot.
            if p.snapshot_wait == 0:
                p.snapshot_wait = self._lo
                self._emit(Ready(send_snapshot=(peer,)))
            if why is _Why.HEARTBEAT:
                # Keeps it from campaigning meanwhile; if it already has the snapshot's last
                # entry, accepting this ends the need for the snapshot.
                self._send_append(peer, self._log.base, ())
            return
        if why is _Why.NEW_ENTRIES and p.probing:
            return
        entries = _within_bytes(self._log.slice(p.next, p.next + self._max_entries))
        if entries or why is not _Why.NEW_ENTRIES:
            self._send_append(peer, p.next - 1, entries)
        if entries and not p.probing:
            p.next = entries[-1].index + 1

    def _send_append(self, peer: NodeId, prev_index: int, entries: tuple[Entry, ...]) -> None:
        prev_term = self._log.term_at(prev_index)
        assert prev_term is not None
        commit, probe = self._commit, self._probe
        incarnation = self._peers.progress[peer].incarnation
        self._send(
            AppendRequest(
                self._id,
                peer,
                self._term,
                prev_index,
                prev_term,
                entries,
                commit,
                probe,
                incarnation,
            )
        )

    def _on_append_response(self, m: AppendResponse) -> None:
        p = self._response_from(m)
        if p is None:
            return
        p.acked_probe = max(p.acked_probe, m.probe)
        if m.success:
            if m.match_index >= p.acknowledged:
                p.acknowledged = 0
            self._matched(m.src, p, m.match_index)
        else:
            self._rejected(m.src, p, m)
        self._maybe_commit()
        self._serve_reads()

    def _on_snapshot_response(self, m: SnapshotResponse) -> None:
        p = self._response_from(m)
        if p is not None:
            p.snapshot_wait = 0
            self._matched(m.src, p, m.last_index)
            self._maybe_commit()

    def _matched(self, peer: NodeId, p: Progress, index: int) -> None:
        """The follower's log matches ours up to `index`: send it what follows."""
        p.probing = False
        p.match = max(p.match, min(index, self.last_index))
        p.next = max(p.next, p.match + 1)
        self._replicate(peer, _Why.NEW_ENTRIES)

    def _response_from(self, m: AppendResponse | SnapshotResponse) -> Progress | None:
        """The sender's progress if `m` is a current answer to this leader."""
        if m.term > self._term:
            self._become_follower(m.term, None)
            return None
        p = self._peers.progress.get(m.src)
        if self._role != LEADER or m.term < self._term or p is None:
            return None
        if m.incarnation < p.incarnation:
            return None  # from an earlier life of the follower: its state may be gone
        if m.incarnation > p.incarnation:
            if p.incarnation:
                # It restarted, maybe without its storage: count nothing from before.
                p.restarted(self.last_index + 1)
            p.incarnation = m.incarnation
        p.heard = self._now
        return p

    def _rejected(self, peer: NodeId, p: Progress, m: AppendResponse) -> None:
        """Probe again from where the hints say the logs may match, and send at once."""
        hint = self._back_off(m)
        if not p.match < hint < p.next:
            # Nothing to go back to. Below the match, it answers a request older than one it
            # acknowledged since (the network reorders; a follower keeps what it acknowledged
            # within one incarnation); at or past `next`, the next heartbeat probes anyway.
            return
        if hint <= p.acknowledged:
            self._warn(
                f"{peer} restarted without entries it had acknowledged (up to "
                f"{p.acknowledged}; it matches at most up to {hint - 1}): bringing it back"
            )
            p.acknowledged = 0
        p.probing, p.next = True, hint
        self._replicate(peer, _Why.RETRY)

    def _back_off(self, m: AppendResponse) -> int:
        """Skip a whole conflicting term per round trip (§5.3, the optimization it sketches)."""
        hint = m.conflict_index
        if m.conflict_term:
            last = self._log.last_index_of_term(m.conflict_term)
            if last is not None:
                hint = last + 1
        return max(1, min(hint, self.last_index + 1))

    def _maybe_commit(self) -> None:
        """§5.4.2: commit the highest index a majority holds, if it is of the current term."""
        if self._role != LEADER:
            return
        index = self._peers.matched(self.voters, self.last_index)
        if index > self._commit and self._log.term_at(index) == self._term:
            self._commit = index
            self._sync_progress()
            self._serve_reads()
        if self._id not in self.voters and self._log.config_index <= self._commit:
            # Removed, and the removal is committed: hand over (thesis §4.2.2).
            self._become_follower(self._term, None)

    # --- reads -----------------------------------------------------------------------------------

    def _serve_reads(self) -> None:
        """Release the reads a majority has confirmed our leadership for (thesis §6.4)."""
        if self._role != LEADER or not self._reads:
            return
        # One read round in flight at a time: reads arriving meanwhile share the next one.
        if self._reads[-1].round > self._probe and self._acked_round() >= self._probe:
            self._start_round()
        if self._commit < self._term_start:
            return
        acked, served = self._acked_round(), []
        while self._reads and self._reads[0].round <= acked:
            read = self._reads.popleft()
            served.append((read.read_id, read.index))
        self._emit(Ready(reads=tuple(served)))

    def _leased(self) -> bool:
        """Leader lease (thesis §6.4.1): a majority acknowledged a round started at tick t, and
        each of them refuses to vote until it has not heard from us for `lo` of its own ticks.
        So no other leader can be elected before t + lo, and until t + lo - margin (in our
        ticks, allowing for clocks that run at slightly different rates) we still lead."""
        if not self._lease_ticks:
            return False
        acked = self._acked_round()
        for probe in [p for p in self._round_ticks if p < acked]:
            del self._round_ticks[probe]
        started = self._round_ticks.get(acked)
        return started is not None and self._now < started + self._lease_ticks

    def _acked_round(self) -> int:
        return self._peers.acked_round(self.voters, self._probe)

    # --- output ----------------------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        self._emit(Ready(messages=(message,)))

    def _warn(self, text: str) -> None:
        self._emit(Ready(warnings=(f"node {self._id}: {text}",)))

    def _emit(self, ready: Ready) -> None:
        self._out = self._out.merge(ready)

    def _take(self) -> Ready:
        """Everything this call produced, plus the changed hard state and new commits."""
        state = HardState(self._term, self._voted_for, self._recovering)
        changed = state if state != self._reported else None
        self._reported = state
        committed = self._log.slice(self._applied + 1, self._commit + 1)
        self._applied = self._commit
        ready, self._out = self._out.merge(Ready(hard_state=changed, committed=committed)), Ready()
        return ready


# Entry data one AppendRequest carries at most (at least one entry always goes): keeps a batch of
# large commands under the 16 MiB message limit of the transport.
MAX_BYTES_PER_MESSAGE = 4 * 1024 * 1024


def _within_bytes(entries: tuple[Entry, ...]) -> tuple[Entry, ...]:
    total = 0
    for count, entry in enumerate(entries):
        total += len(entry.data)
        if total > MAX_BYTES_PER_MESSAGE and count:
            return entries[:count]
    return entries
