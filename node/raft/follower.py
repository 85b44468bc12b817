"""A follower's rules: following a leader, accepting or refusing its entries and snapshots,
and the end of a recovery once a leader has brought it up to date."""

from __future__ import annotations

from collections.abc import Sequence

from ringfs.node.raft.member import Member
from ringfs.node.raft.messages import (
    AppendRequest,
    AppendResponse,
    Entry,
    NodeId,
    Ready,
    SnapshotRequest,
    SnapshotResponse,
)


class FollowerSide(Member):
    """What a member does with a leader's requests (see `Raft`)."""

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
