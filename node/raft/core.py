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
(thesis §4.2.1). Beyond the paper, members that may have lost their storage (docs/raft.md):
incarnations, so a leader counts nothing from a follower's earlier lives; `recovering` members
that vote and campaign only in a new group until a leader has brought them up to date; no vote
for an election timeout after each start; a follower's vote bound to the leader of its term.

The rules live in three parts: `Member` (shared state, log, roles, output), `LeaderSide`
(replication, commit, reads) and `FollowerSide` (a leader's requests); elections and the calls
are here.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence

from ringfs.node.raft.follower import FollowerSide
from ringfs.node.raft.leader import LeaderSide, Why
from ringfs.node.raft.member import CANDIDATE, FOLLOWER, LEADER, PRE_CANDIDATE, PendingRead
from ringfs.node.raft.memlog import InMemoryLog
from ringfs.node.raft.messages import (
    EMPTY_READY,
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
from ringfs.node.raft.progress import Peers

__all__ = [
    "CANDIDATE",
    "EMPTY_READY",
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


class Raft(LeaderSide, FollowerSide):
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
        self._round_ticks = {}
        self._term, self._voted_for = hard_state.term, hard_state.voted_for
        self._recovering = hard_state.recovering
        self._reported = hard_state
        self._incarnation = incarnation
        self._booting = lo if boot_quiet else 0
        initial = decode_voters(encode_voters(tuple(sorted(voters))))
        self._log = InMemoryLog(initial, snapshot, entries)
        self._commit = self._applied = self._log.base
        self._role = FOLLOWER
        self._leader = None
        self._elapsed = self._timeout = self._since_leader = 0
        self._reset_timer()
        self._votes = {}
        self._peers = Peers(self._id)
        self._learners = frozenset()
        self._term_start = self._probe = self._heartbeat_elapsed = self._now = 0
        self._reads = deque()
        self._out = EMPTY_READY

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
    def last_term(self) -> int:
        return self._log.last_term

    @property
    def snapshot(self) -> SnapshotMeta | None:
        return self._log.snapshot

    @property
    def match_index(self) -> dict[NodeId, int]:
        """Each follower's (and learner's) replicated prefix, as the leader knows it; empty on
        other roles."""
        return {peer: p.match for peer, p in self._peers.progress.items()}

    @property
    def learners(self) -> frozenset[NodeId]:
        """The non-voters this leader replicates to (see `set_learners`)."""
        return self._learners

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
            "learners": sorted(self._learners),
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
            return EMPTY_READY
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

    def set_learners(self, learners: Sequence[NodeId]) -> Ready:
        """Replicate to `learners` too (voters among them are ignored), so that a server about
        to be added catches up, by snapshot if the log was compacted, before it counts (thesis
        §4.2.1): added empty, it would hold up every commit until it caught up. They count for
        nothing. A leader's alone: they are forgotten when it stops leading.

        Raises NotLeader on other roles, ValueError for a bad node id.
        """
        self._require_leader()
        old, self._learners = self._learners, frozenset(map(check_node_id, learners))
        self._sync_progress()
        for peer in sorted(self._learners - old):
            self._replicate(peer, Why.HEARTBEAT)
        return self._take()

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
        self._reads.append(PendingRead(read_id, index, self._probe + 1))
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

    def step_down(self) -> Ready:
        """Stop leading or campaigning, for the rest of this core's life: the caller can no
        longer persist what a role needs (its storage failed). Its pending reads fail."""
        self._become_follower(self._term, None)
        return self._take()

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
        self._replicate_new()
        self._maybe_commit()
        return first, self._take()

    # --- roles and timers ------------------------------------------------------------------------

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

    # --- replication: leader side ------------------------------------------------------------

    # --- reads -----------------------------------------------------------------------------------

    # --- output ----------------------------------------------------------------------------------
