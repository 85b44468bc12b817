"""The state every part of the Raft core shares, with the log, role and output helpers.

`Raft` (`core.py`) is assembled from `Member` and its two role parts, `LeaderSide`
(`leader.py`) and `FollowerSide` (`follower.py`), so that each file holds one set of rules.
Only `Raft.__init__` sets the state declared here.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from ringfs.node.raft.memlog import InMemoryLog
from ringfs.node.raft.messages import (
    EMPTY_READY,
    Entry,
    EntryKind,
    HardState,
    Message,
    NodeId,
    Ready,
)
from ringfs.node.raft.progress import Peers

FOLLOWER = "follower"
PRE_CANDIDATE = "pre_candidate"
CANDIDATE = "candidate"
LEADER = "leader"


@dataclass(frozen=True, slots=True)
class PendingRead:
    """A ReadIndex read the leader holds until a heartbeat round confirms its leadership."""

    read_id: int
    index: int
    round: int


class Member:
    """One member's state and the steps every rule takes (see `Raft` for the whole)."""

    # Identity and settings.
    _id: NodeId
    _rng: random.Random
    _lo: int
    _hi: int
    _heartbeat_ticks: int
    _max_entries: int
    _pre_vote: bool
    _check_quorum: bool
    _lease_ticks: int
    _incarnation: int
    # Persistent state, and the hard state last reported.
    _term: int
    _voted_for: NodeId | None
    _recovering: bool
    _reported: HardState
    _log: InMemoryLog
    # Volatile state.
    _commit: int
    _applied: int
    _role: str
    _leader: NodeId | None
    _elapsed: int
    _timeout: int
    _since_leader: int
    _booting: int  # ticks left in which this member, just started, grants no vote
    _votes: dict[NodeId, bool]
    # Leader state.
    _peers: Peers
    _learners: frozenset[NodeId]  # non-voters it replicates to, so they catch up
    _term_start: int
    _probe: int
    _heartbeat_elapsed: int
    _now: int
    _round_ticks: dict[int, int]
    _reads: deque[PendingRead]
    # What the current call produced so far.
    _out: Ready

    @property
    def last_index(self) -> int:
        return self._log.last_index

    @property
    def voters(self) -> tuple[NodeId, ...]:
        """The configuration in force: the latest CONFIG entry in the log, even uncommitted."""
        return self._log.voters

    # --- log -----------------------------------------------------------------------------------

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
        """The leader replicates to the voters and its learners, and to the previous
        configuration's until the change commits, so that a removed node learns it is out and
        stays quiet."""
        if self._role != LEADER:
            return
        self._learners -= set(self.voters)  # a learner made a voter
        peers = set(self.voters) | self._learners
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
            self._learners = frozenset()
            self._peers.sync((), 0, 0)
            self._emit(Ready(failed_reads=tuple(r.read_id for r in self._reads)))
            self._reads.clear()
        if was != FOLLOWER:
            self._reset_timer()

    # --- output ----------------------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        self._emit(Ready(messages=(message,)))

    def _warn(self, text: str) -> None:
        self._emit(Ready(warnings=(f"node {self._id}: {text}",)))

    def _emit(self, ready: Ready) -> None:
        self._out = self._out.merge(ready)

    def _take(self) -> Ready:
        """Everything this call produced, plus the changed hard state and new commits."""
        ready, self._out = self._out, EMPTY_READY
        now, was = (self._term, self._voted_for, self._recovering), self._reported
        if now != (was.term, was.voted_for, was.recovering):
            self._reported = HardState(*now)
            ready = ready.merge(Ready(hard_state=self._reported))
        if self._commit > self._applied:
            committed = self._log.slice(self._applied + 1, self._commit + 1)
            self._applied = self._commit
            ready = ready.merge(Ready(committed=committed))
        return ready
