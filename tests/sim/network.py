"""An in-memory network for the simulation: seeded loss, duplication, delay and partitions.

Every random choice comes from one `random.Random`, and messages are delivered by one task
in (time, sequence) order, so under trio's MockClock a run is a function of its seed. Sends
are gathered in an outbox and drawn for in a canonical order (source, destination, message
type) at the next checkpoint, so the draws do not depend on the order in which a node
happened to emit one batch of messages.

Reordering needs no rule of its own: it follows from independent delays. A snapshot image is
a file: the network reads it when it is sent and gives each delivered copy a file of its own,
which the receiver then owns, as a real transfer would.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import trio

__all__ = ["Faults", "SimNetwork"]

Deliver = Callable[[Any, "Path | None"], None]


@dataclasses.dataclass(frozen=True)
class Faults:
    """How the network misbehaves: per message probabilities and a delay range in seconds."""

    drop: float = 0.0
    duplicate: float = 0.0
    delay: tuple[float, float] = (0.001, 0.01)

    def __str__(self) -> str:
        lo, hi = self.delay
        return f"drop={self.drop:.2f} dup={self.duplicate:.2f} delay={lo:.3f}..{hi:.3f}s"


#: A network that only delays, a little.
CALM = Faults(delay=(0.001, 0.01))


class _Endpoint:
    """The `Transport` one node gets: sends go into the network's outbox."""

    def __init__(self, network: SimNetwork, node_id: str) -> None:
        self._network = network
        self.node_id = node_id

    def send(self, message: Any, snapshot: Path | None = None) -> None:
        self._network.send(self.node_id, message, snapshot)


class SimNetwork:
    """The network between ``node_ids``; `run` must be running for anything to arrive."""

    def __init__(
        self, rng: random.Random, node_ids: Iterable[str], faults: Faults, files: Path | None = None
    ) -> None:
        """`files`: where delivered snapshot images go (needed only if images are sent)."""
        self.rng = rng
        self._files = files
        self._file_names = itertools.count()
        self.node_ids = tuple(node_ids)
        self.faults = faults
        self.stats: Counter[str] = Counter()
        self._receivers: dict[str, Deliver] = {}
        self._group: dict[str, int] = {}  # empty: fully connected
        self._outbox: list[tuple[str, Any, bytes | None]] = []
        self._queue: list[tuple[float, int, str, Any, bytes | None]] = []
        self._seq = 0
        self._wakeup = trio.Event()
        # A running digest of every delivery, to compare two runs of one seed.
        self.trace: list[tuple[float, str, str, str]] = []
        self.keep_trace = False

    def transport(self, node_id: str) -> _Endpoint:
        return _Endpoint(self, node_id)

    # -- membership and faults ---------------------------------------------------------------

    def attach(self, node_id: str, deliver: Deliver) -> None:
        """The node is up: messages that arrive from now on go to ``deliver``."""
        self._receivers[node_id] = deliver

    def detach(self, node_id: str) -> None:
        """The node crashed: what arrives for it until it is attached again is lost."""
        self._receivers.pop(node_id, None)

    def partition(self, groups: Collection[Collection[str]]) -> None:
        """Only nodes in the same group can talk; a node in no group is cut off from all."""
        self._group = {}
        for number, group in enumerate(groups):
            for node_id in group:
                self._group[node_id] = number
        for node_id in self.node_ids:
            self._group.setdefault(node_id, -1 - self.node_ids.index(node_id))

    def heal(self) -> None:
        self._group = {}

    @property
    def partitioned(self) -> bool:
        return bool(self._group)

    def connected(self, a: str, b: str) -> bool:
        return not self._group or self._group[a] == self._group[b]

    # -- sending and delivering --------------------------------------------------------------

    def send(self, src: str, message: Any, snapshot: Path | None) -> None:
        dst = message.dst
        if dst not in self.node_ids or dst == src:
            raise AssertionError(f"{src} sent {message!r} to a node outside the group")
        image = None if snapshot is None else snapshot.read_bytes()
        self._outbox.append((src, message, image))
        self._wakeup.set()

    def _draw(self) -> None:
        """Decide the fate of what was sent since the last draw, in a canonical order."""
        outbox, self._outbox = self._outbox, []
        outbox.sort(key=lambda item: (item[0], item[1].dst, type(item[1]).__name__))
        now = trio.current_time()
        faults = self.faults
        for src, message, snapshot in outbox:
            self.stats["sent"] += 1
            if not self.connected(src, message.dst):
                self.stats["cut"] += 1
                continue
            if self.rng.random() < faults.drop:
                self.stats["dropped"] += 1
                continue
            copies = 2 if self.rng.random() < faults.duplicate else 1
            self.stats["duplicated"] += copies - 1
            for _ in range(copies):
                due = now + self.rng.uniform(*faults.delay)
                self._seq += 1
                heapq.heappush(self._queue, (due, self._seq, message.dst, message, snapshot))

    def _deliver_due(self) -> None:
        now = trio.current_time()
        while self._queue and self._queue[0][0] <= now:
            _, _, dst, message, snapshot = heapq.heappop(self._queue)
            receiver = self._receivers.get(dst)
            if receiver is None or not self.connected(message.src, dst):
                self.stats["lost"] += 1
                continue
            self.stats["delivered"] += 1
            if self.keep_trace:
                self.trace.append((now, message.src, dst, repr(message)))
            receiver(message, self._file(snapshot))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver messages when they are due, until cancelled."""
        task_status.started()
        while True:
            # A fresh event first: a send while drawing or delivering must wake the next wait.
            self._wakeup = trio.Event()
            if self._outbox:
                self._draw()
            self._deliver_due()
            due = self._queue[0][0] if self._queue else math.inf
            with trio.move_on_at(due):
                await self._wakeup.wait()

    def _file(self, image: bytes | None) -> Path | None:
        if image is None:
            return None
        assert self._files is not None, "a network that carries snapshots needs `files`"
        path = self._files / f"delivered-{next(self._file_names)}"
        path.write_bytes(image)
        return path

    def in_flight(self) -> int:
        return len(self._queue) + len(self._outbox)
