"""Raft's safety properties, checked on everything the simulated nodes persist and apply.

`Monitor` is told about every core call (role and term), every `save` (the node's durable
log), every applied entry and every snapshot, and records violations of:

- Election Safety: at most one leader per term.
- Log Matching: two logs holding an entry with the same index and term hold the same entry
  and agree on every entry before it. Checked incrementally: every persisted (index, term)
  must always carry the same entry and sit after the same (index - 1, term).
- Leader Completeness: an entry committed in term u is in the log of every leader of a term
  after u. The term an entry is committed in is bounded from above by the term of the first
  node seen to count it as committed, which keeps the check free of false alarms.
- State Machine Safety: no two nodes apply different entries at one index (and a node applies
  the entries in order, without gaps); snapshots taken at one index hold the same state.

Plus one property of the client layer: no command is committed at two indexes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

from ringfs.node.raft.core import LEADER, Entry, EntryKind, Raft, SnapshotMeta

__all__ = ["Monitor"]

# Enough to diagnose; a broken run can produce thousands.
MAX_VIOLATIONS = 20


@dataclasses.dataclass
class _LeaderLog:
    term: int
    node: str
    time: float
    snapshot_index: int
    entries: dict[int, Entry]


class Monitor:
    """Collects invariant violations (as readable strings) during one simulation."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.violations: list[str] = []
        self.events: list[str] = []
        self.leaders: dict[int, str] = {}
        # (index, term) -> (entry, term of the entry before it)
        self._entries: dict[tuple[int, int], tuple[Entry, int]] = {}
        # index -> (entry, upper bound on the term it was committed in)
        self.committed: dict[int, tuple[Entry, int]] = {}
        self._commit_seen: dict[str, int] = {}
        self._applied: dict[str, int] = {}
        self._leader_logs: list[_LeaderLog] = []
        self._images: dict[int, tuple[str, bytes]] = {}
        self._command_index: dict[Any, int] = {}

    def _now(self) -> str:
        try:
            return f"t={self._clock():.3f}"
        except RuntimeError:  # outside the run: the checks at the end
            return "at the end"

    def violation(self, text: str) -> None:
        if len(self.violations) < MAX_VIOLATIONS:
            self.violations.append(f"{self._now()} {text}")

    def note(self, text: str) -> None:
        self.events.append(f"{self._now()} {text}")

    # -- roles -------------------------------------------------------------------------------

    def observe_role(self, node: str, raft: Raft) -> None:
        """After every core call: election safety."""
        if raft.role != LEADER:
            return
        other = self.leaders.setdefault(raft.term, node)
        if other != node:
            self.violation(f"election safety: {other} and {node} both lead term {raft.term}")

    # -- the durable log ---------------------------------------------------------------------

    def after_save(
        self,
        node: str,
        raft: Raft,
        snapshot: SnapshotMeta | None,
        log: Mapping[int, Entry],
        appended: tuple[Entry, ...],
    ) -> None:
        """After a node's `save`: log matching, commits, and a new leader's log."""
        for entry in appended:
            prev = entry.index - 1
            if prev in log:
                prev_term = log[prev].term
            elif snapshot is not None and snapshot.last_index == prev:
                prev_term = snapshot.last_term
            elif prev == 0:
                prev_term = 0
            else:
                self.violation(f"log of {node}: entry {entry.index} saved after a gap")
                continue
            key = (entry.index, entry.term)
            known = self._entries.setdefault(key, (entry, prev_term))
            if known != (entry, prev_term):
                self.violation(
                    f"log matching: {node} holds {_show(entry)} after term {prev_term}, "
                    f"elsewhere {_show(known[0])} after term {known[1]}"
                )
        self._observe_commit(node, raft, snapshot, log)
        if raft.role == LEADER:
            self._observe_leader(node, raft, snapshot, log)

    def _observe_commit(
        self, node: str, raft: Raft, snapshot: SnapshotMeta | None, log: Mapping[int, Entry]
    ) -> None:
        commit = raft.commit_index
        seen = self._commit_seen.get(node, 0)
        # Entries a snapshot covers are gone from the log (the core's snapshot may be newer
        # than the storage's while one is being installed).
        base = max(_last(snapshot), _last(raft.snapshot))
        for index in range(max(seen, base) + 1, commit + 1):
            entry = log.get(index)
            if entry is None:
                self.violation(f"{node} counts index {index} committed but has not saved it")
                break
            self._commit(node, entry, raft.term)
        self._commit_seen[node] = commit

    def _commit(self, node: str, entry: Entry, term: int) -> None:
        known = self.committed.get(entry.index)
        if known is None:
            self.committed[entry.index] = (entry, term)
            if entry.kind is EntryKind.COMMAND:
                op_id = json.loads(entry.data)["id"]
                first = self._command_index.setdefault(op_id, entry.index)
                if first != entry.index:
                    self.violation(f"op #{op_id} committed twice: at {first} and {entry.index}")
        elif known[0] != entry:
            self.violation(
                f"state machine safety: {node} has {_show(entry)} committed, "
                f"another node {_show(known[0])}"
            )
        elif term < known[1]:
            self.committed[entry.index] = (entry, term)

    def _observe_leader(
        self, node: str, raft: Raft, snapshot: SnapshotMeta | None, log: Mapping[int, Entry]
    ) -> None:
        if any(x.term == raft.term and x.node == node for x in self._leader_logs):
            return
        self.note(f"{node} leads term {raft.term}")
        base = max(_last(snapshot), _last(raft.snapshot))
        self._leader_logs.append(_LeaderLog(raft.term, node, self._clock(), base, dict(log)))

    # -- applying ----------------------------------------------------------------------------

    def restarted(self, node: str, applied: int) -> None:
        self._applied[node] = applied
        self._commit_seen[node] = 0

    def applied(self, node: str, entry: Entry) -> None:
        """A state machine applied ``entry``: in order, and the same entry everywhere."""
        last = self._applied.get(node, 0)
        if entry.index != last + 1:
            self.violation(f"{node} applied index {entry.index} right after {last}")
        self._applied[node] = entry.index
        self._commit(node, entry, 1 << 62)

    def snapshot_taken(self, node: str, index: int, image: bytes) -> None:
        known = self._images.setdefault(index, (node, image))
        if known[1] != image:
            self.violation(
                f"state machine safety: snapshots at index {index} differ: "
                f"{node} {image[:200]!r}, {known[0]} {known[1][:200]!r}"
            )

    def installed(self, node: str, meta: SnapshotMeta, index: int, image: bytes) -> None:
        self.note(f"{node} installed a snapshot at index {meta.last_index}")
        if index != meta.last_index:
            self.violation(f"{node} installed an image of index {index} as {meta}")
        self.snapshot_taken(node, index, image)
        self._applied[node] = index

    # -- at the end --------------------------------------------------------------------------

    def finish(self) -> None:
        """Leader completeness, now that every commit is known."""
        for leader in self._leader_logs:
            for index, (entry, term) in sorted(self.committed.items()):
                if term >= leader.term or index <= leader.snapshot_index:
                    continue
                if leader.entries.get(index) != entry:
                    have = leader.entries.get(index)
                    self.violation(
                        f"leader completeness: {_show(entry)} committed by term {term} "
                        f"is missing from {leader.node}'s log when it led term {leader.term} "
                        f"(t={leader.time:.3f}; it had {_show(have) if have else 'nothing'})"
                    )
                    break


def _last(meta: SnapshotMeta | None) -> int:
    return meta.last_index if meta is not None else 0


def _show(entry: Entry) -> str:
    data = entry.data[:80].decode(errors="replace")
    return f"<{entry.index}@t{entry.term} {entry.kind.name} {data}>"
