"""The leader's rules: heartbeat rounds, replication to each follower, the commit rule, and
ReadIndex reads with the leader lease."""

from __future__ import annotations

import enum

from ringfs.node.raft.member import LEADER, Member
from ringfs.node.raft.messages import (
    AppendRequest,
    AppendResponse,
    Entry,
    NodeId,
    Ready,
    SnapshotResponse,
)
from ringfs.node.raft.progress import Progress

# Entry data one AppendRequest carries at most (at least one entry always goes): keeps a batch of
# large commands under the 16 MiB message limit of the transport.
MAX_BYTES_PER_MESSAGE = 4 * 1024 * 1024


class Why(enum.Enum):
    """Why the leader is sending to a follower, which decides whether an empty message goes."""

    HEARTBEAT = enum.auto()
    RETRY = enum.auto()
    NEW_ENTRIES = enum.auto()


class LeaderSide(Member):
    """What a member does while it leads (see `Raft`)."""

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
        else:
            # The followers new entries did not go to at once take them now, in one batch.
            self._replicate_all(Why.NEW_ENTRIES)

    # --- replication -----------------------------------------------------------------------------

    def _start_round(self) -> None:
        """A heartbeat round: every follower hears from us, tagged with a new probe."""
        self._probe += 1
        self._round_ticks[self._probe] = self._now
        self._replicate_all(Why.HEARTBEAT)

    def _replicate_all(self, why: Why) -> None:
        for peer in self._peers.progress:
            self._replicate(peer, why)

    def _replicate_new(self) -> None:
        """New entries go at once to the followers a commit needs (`Peers.prompt`)."""
        for peer in self._peers.prompt(self.voters):
            self._replicate(peer, Why.NEW_ENTRIES)

    def _replicate(self, peer: NodeId, why: Why) -> None:
        p = self._peers.progress[peer]
        if p.next <= self._log.base or self._from_snapshot(peer, p):
            # The entries it needs are compacted away (or it is a new server to fill from
            # scratch, where one image beats the whole log): it needs the snapshot.
            if p.snapshot_wait == 0:
                p.snapshot_wait = self._lo
                self._emit(Ready(send_snapshot=(peer,)))
            if why is Why.HEARTBEAT:
                # Keeps it from campaigning meanwhile; if it already has the snapshot's last
                # entry, accepting this ends the need for the snapshot.
                self._send_append(peer, self._log.base, ())
            return
        if why is Why.NEW_ENTRIES and p.probing:
            return
        entries = _within_bytes(self._log.slice(p.next, p.next + self._max_entries))
        if entries or why is not Why.NEW_ENTRIES:
            self._send_append(peer, p.next - 1, entries)
        if entries and not p.probing:
            p.next = entries[-1].index + 1

    def _from_snapshot(self, peer: NodeId, p: Progress) -> bool:
        """A learner with an empty log catches up by snapshot, once anything is committed:
        the caller takes one if it has none (thesis §4.2.1, §5.4)."""
        return peer in self._learners and p.next == 1 and p.match == 0 and self._commit > 0

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
        if self._peers.is_prompt(peer) or self.last_index - p.match >= self._max_entries:
            # A follower left to the ticks gets more now only while a backlog streams.
            self._replicate(peer, Why.NEW_ENTRIES)

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
        self._replicate(peer, Why.RETRY)

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


def _within_bytes(entries: tuple[Entry, ...]) -> tuple[Entry, ...]:
    total = 0
    for count, entry in enumerate(entries):
        total += len(entry.data)
        if total > MAX_BYTES_PER_MESSAGE and count:
            return entries[:count]
    return entries
