"""Which replica a block read goes to: each node's read load as this client sees it.

For every node the client reads from, `ReadLoad` keeps the reads it has out there and an
estimate of how long one takes (an exponentially weighted moving average of the answered
ones). A node's *cost* is (reads out + 1) x its latency: a node that is busy, or slow, or both,
costs more. `ReadLoad.order` draws the replicas one after the other, each with a probability
in proportion to weight / cost, so equal nodes share the reads evenly, a node of weight 2 takes
twice the share of a node of weight 1, and a node ten times as slow gets about a tenth of the
share of each of the others. Nodes the pool holds suspect (a recent failure) come last.

Not the better of two random choices: with three replicas to choose from, the worst of them
loses every pair it is in, so a node only a little slower than the others would get no read at
all; a draw in proportion keeps every share smooth, and so keeps measuring every node.

The estimate of a node that is not read from fades (halving every `HALF_LIFE` seconds), so a
node that was slow is tried again a while after it stopped being read, and its next reads set
the estimate anew. A read still out counts as at least as slow as it has been out, so a node
that hangs is avoided before any of its reads comes back.

Pure: the caller passes the time (`trio.current_time()`) and may pass a seeded `Random`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

#: Seconds after which a latency estimate with no new answer counts half: a node avoided
#: for being slow is back to an even share within a few of them, unless still slow.
HALF_LIFE = 2.0
#: The weight of one answer in the moving average: a node that turns ten times as slow costs
#: about four times as much after its first slow answer.
ALPHA = 0.3
#: The lowest latency a cost uses (seconds), so a node never read from (or not for long) is
#: tried soon, and no cost is zero.
FLOOR = 0.001


class _Node:
    """One node's reads out and latency estimate."""

    __slots__ = ("out", "sent_sum", "latency", "measured_at")

    def __init__(self) -> None:
        self.out = 0
        # The send times of the reads out, added up: their mean age without a list of them.
        self.sent_sum = 0.0
        self.latency = 0.0
        self.measured_at: float | None = None  # None: no answer yet


class ReadLoad:
    """This client's view of how busy and how fast each node is at serving its reads."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._nodes: dict[str, _Node] = {}
        self._rng = rng or random.Random()

    def _node(self, address: str) -> _Node:
        node = self._nodes.get(address)
        if node is None:
            node = self._nodes[address] = _Node()
        return node

    def sent(self, address: str, now: float) -> None:
        """A read went out to `address` at `now`."""
        node = self._node(address)
        node.out += 1
        node.sent_sum += now

    def answered(self, address: str, sent_at: float, now: float) -> None:
        """The read sent at `sent_at` brought its data back at `now`: it is no longer out,
        and its time goes into the estimate."""
        node = self._back(address, sent_at)
        took = now - sent_at
        if node.measured_at is None:
            node.latency = took
        else:
            node.latency = ALPHA * took + (1 - ALPHA) * self._faded(node, now)
        node.measured_at = now

    def dropped(self, address: str, sent_at: float) -> None:
        """The read sent at `sent_at` ended without data (an error, no answer, cancelled): it
        is no longer out. Its time says nothing of how fast the node reads (the pool's
        suspects deal with nodes that fail)."""
        self._back(address, sent_at)

    def _back(self, address: str, sent_at: float) -> _Node:
        node = self._node(address)
        node.out -= 1
        # Exactly zero once nothing is out, so rounding never piles up.
        node.sent_sum = node.sent_sum - sent_at if node.out else 0.0
        return node

    @staticmethod
    def _faded(node: _Node, now: float) -> float:
        if node.measured_at is None:
            return 0.0
        return node.latency * math.pow(0.5, max(now - node.measured_at, 0.0) / HALF_LIFE)

    def cost(self, address: str, now: float) -> float:
        """(reads out + 1) x the latency: the faded estimate, or the mean age of the reads
        still out if they have been out longer, at least `FLOOR`."""
        node = self._nodes.get(address)
        if node is None:
            return FLOOR
        latency = self._faded(node, now)
        if node.out:
            latency = max(latency, now - node.sent_sum / node.out)
        return (node.out + 1) * max(latency, FLOOR)

    def order(
        self,
        replicas: Sequence[tuple[str, float]],
        now: float,
        suspect: Callable[[str], bool],
    ) -> list[str]:
        """The addresses of `replicas` ((address, weight) pairs) in the order to try them:
        the healthy ones drawn one after the other in proportion to weight / cost, then the
        suspect ones in the order given."""
        healthy = [(a, w / self.cost(a, now)) for a, w in replicas if not suspect(a)]
        chosen: list[str] = []
        while healthy:
            [index] = self._rng.choices(range(len(healthy)), [share for _, share in healthy])
            chosen.append(healthy.pop(index)[0])
        return chosen + [a for a, _ in replicas if suspect(a)]
