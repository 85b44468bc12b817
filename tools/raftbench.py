"""`ringfs bench --parts`, second part: the Raft core's share of a metadata round, alone:
three members in this process, no trio, no disk, no network.

A `close` costs the leader's core a proposal and the step of a follower's answer, the
follower's core the step of the AppendRequest, and every query a leased `read_index`. This
elects a leader among three cores and makes `ROUNDS` rounds of a small file's entry through
them, timing each of those calls.

Numbers, not verdicts: `docs/performance.md` reads them.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

from ringfs.node.raft.core import LEADER, AppendRequest, Raft, Ready

ROUNDS = 3000
#: About a small file's entry: its create and 4 KiB of bytes, encoded.
ENTRY_BYTES = 4300
#: Ticks given between rounds, once every so many rounds: heartbeats go on as in a cluster.
TICK_EVERY = 10
NODES = ("n1", "n2", "n3")
T = TypeVar("T")


class _Group:
    """Three cores handing each other their messages at once."""

    def __init__(self) -> None:
        self.cores = {node: Raft(node, NODES, rng=random.Random(node)) for node in NODES}

    def deliver(self, ready: Ready) -> None:
        for message in ready.messages:
            self.deliver(self.cores[message.dst].step(message))

    def tick(self) -> None:
        for core in self.cores.values():
            self.deliver(core.tick())

    def leader(self) -> Raft:
        while True:
            self.tick()
            leaders = [core for core in self.cores.values() if core.role == LEADER]
            if leaders:
                return leaders[0]


def _timed(samples: list[float], call: Callable[..., T], *args: object) -> T:
    start = time.perf_counter()
    result = call(*args)
    samples.append(time.perf_counter() - start)
    return result


def rounds(count: int) -> dict[str, list[float]]:
    """Seconds of each call of `count` rounds, by call."""
    group = _Group()
    leader = group.leader()
    data = os.urandom(ENTRY_BYTES)
    times: dict[str, list[float]] = {
        "leader: propose": [],
        "follower: step the AppendRequest": [],
        "leader: step the answer": [],
        "leader: leased read_index": [],
    }
    propose, step, answer, read = times.values()
    for n in range(count):
        _, ready = _timed(propose, leader.propose, data)
        for request in ready.messages:
            assert isinstance(request, AppendRequest)
            stepped = _timed(step, group.cores[request.dst].step, request)
            for response in stepped.messages:
                _timed(answer, leader.step, response)
        _timed(read, leader.read_index, n)
        if n % TICK_EVERY == 0:
            group.tick()
    return times


def run() -> None:
    print(f"the Raft core, {ROUNDS} rounds of a {ENTRY_BYTES}-byte entry among three members:")
    for name, samples in rounds(ROUNDS).items():
        print(f"  {name:<34} median {statistics.median(samples) * 1e6:6.1f} µs")
