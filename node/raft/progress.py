"""A Raft leader's view of the other nodes: replication progress, quorum arithmetic, and the
followers new entries go to at once.

Every quorum question the leader asks has the same shape: sort one number per voter (the
leader's own counts too while it is a voter) and take the value a majority has reached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ringfs.node.raft.messages import NodeId


@dataclass(slots=True)
class Progress:
    """The leader's view of one follower."""

    next: int
    match: int = 0
    # True until the follower accepts an append: next is a guess, so send one batch at a time.
    probing: bool = True
    # Ticks before a snapshot may be offered again (a transfer takes time).
    snapshot_wait: int = 0
    # Highest heartbeat round the follower acknowledged in this term.
    acked_probe: int = 0
    # The leader's tick count when the follower last answered (check-quorum).
    heard: int = 0
    # The follower's incarnation, the highest seen (0: none yet); answers from earlier ones
    # are ignored.
    incarnation: int = 0
    # What the follower had acknowledged before it restarted, until its log is seen again:
    # a log that ends before it lost entries it acknowledged.
    acknowledged: int = 0

    def restarted(self, next_index: int) -> None:
        """The follower started again: nothing it acknowledged before may count any more."""
        self.acknowledged = max(self.acknowledged, self.match)
        self.next, self.match, self.probing, self.snapshot_wait = next_index, 0, True, 0


def majority_value(values: Iterable[int]) -> int:
    """The highest value that a majority of `values` has reached."""
    ranked = sorted(values, reverse=True)
    return ranked[len(ranked) // 2]


class Peers:
    """The leader's `Progress` for each node it replicates to."""

    def __init__(self, leader: NodeId) -> None:
        self._leader = leader
        self.progress: dict[NodeId, Progress] = {}
        self._prompt: frozenset[NodeId] = frozenset()

    def sync(self, peers: Iterable[NodeId], next_index: int, now: int) -> None:
        """Track exactly `peers` (minus the leader); new ones start probing at `next_index`."""
        wanted = set(peers) - {self._leader}
        for peer in sorted(wanted - self.progress.keys()):
            self.progress[peer] = Progress(next=next_index, heard=now)
        for peer in sorted(self.progress.keys() - wanted):
            del self.progress[peer]

    def prompt(self, voters: tuple[NodeId, ...]) -> frozenset[NodeId]:
        """The followers new entries go to at once: as many voters as a commit needs besides
        the leader, those holding the most of the log (on a tie, the ones chosen before). The
        others take them in batches a tick later, so an entry costs one follower's round, not
        every follower's; a chosen one that stops answering falls behind and is replaced."""
        followers = [v for v in voters if v != self._leader and v in self.progress]
        needed = len(voters) // 2 + 1 - (self._leader in voters)
        ranked = sorted(
            followers, key=lambda v: (-self.progress[v].match, v not in self._prompt, v)
        )
        self._prompt = frozenset(ranked[:needed])
        return self._prompt

    def is_prompt(self, peer: NodeId) -> bool:
        """Whether `peer` was among the followers last chosen by `prompt`."""
        return peer in self._prompt

    def matched(self, voters: tuple[NodeId, ...], last_index: int) -> int:
        """The highest index a majority of `voters` holds; the leader holds its whole log."""
        return majority_value(self._values(voters, last_index, lambda p: p.match))

    def acked_round(self, voters: tuple[NodeId, ...], probe: int) -> int:
        """The latest heartbeat round a majority of `voters` acknowledged."""
        return majority_value(self._values(voters, probe, lambda p: p.acked_probe))

    def active(self, voters: tuple[NodeId, ...], since: int) -> bool:
        """A majority of `voters` answered after tick `since`."""
        return majority_value(self._values(voters, since + 1, lambda p: p.heard)) > since

    def _values(
        self, voters: tuple[NodeId, ...], own: int, field: Callable[[Progress], int]
    ) -> list[int]:
        """One value per voter: `own` for the leader, 0 for a node it does not track."""
        values = []
        for voter in voters:
            p = self.progress.get(voter)
            values.append(own if voter == self._leader else field(p) if p else 0)
        return values
