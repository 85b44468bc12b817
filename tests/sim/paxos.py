"""The simulation of the cluster map's register: CASPaxos on every node, under faults.

`simulate_register(draw_register_config(seed))` runs 3 or 5 nodes, each an acceptor and a
proposer (`ringfs.node.cluster.paxos`), on the seeded `SimNetwork` (loss, duplication, delays
that reorder, partitions), with crashes that keep only what a node saved: its acceptor state,
saved before each answer, and its ballot counter, saved before each ballot is used. A few
clients read, write, compare-and-set and increment the register through any node. In half
the seeds the acceptors change meanwhile: the value is then (members, x), the clients work on
x, and a changer adds or removes one acceptor at a time out of five nodes, starting from three;
each proposer starts from the members it last saw (after a crash, the first ones), so stale
proposers are the rule. Then everything heals and each client must complete a few more
operations.

A run passes when the history is linearizable (`tests.sim.linearizability`, the register as
one key), no ballot was accepted with two values, and every client got its operations done
after healing. Time is trio's MockClock and every choice comes from the seed, so a seed
replays the same run (`python -m tests.sim.paxos SEED`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import random
from collections.abc import Sequence
from typing import Any

import hypothesis  # noqa: F401  (its trio plugin makes the scheduler deterministic)
import trio
import trio._core._run as _trio_run
import trio.testing

from ringfs.node.cluster.paxos import (
    Accept,
    Accepted,
    Acceptor,
    AcceptorState,
    Ballot,
    Ballots,
    Change,
    Conflict,
    InDoubt,
    Message,
    Prepare,
    Proposal,
    Reconfigured,
)
from tests.sim.linearizability import CAS, INCR, READ, WRITE, Op, Verdict, check
from tests.sim.network import CALM, SimNetwork
from tests.sim.schedule import FaultEvent, draw_schedule

__all__ = ["RegisterConfig", "RegisterResult", "draw_register_config", "simulate_register"]

KEY = "map"
#: How long a proposer waits for a majority before it tries again with a higher ballot.
ATTEMPT_TIMEOUT = 0.3
#: After healing, every client must complete its operations within this.
SETTLE_LIMIT = 30.0
POST_HEAL_OPS = 3
#: How often a proposal starts from an older set of acceptors than the last its node saw.
STALE = 0.3


@dataclasses.dataclass(frozen=True)
class RegisterConfig:
    seed: int
    nodes: tuple[str, ...]
    #: The acceptors at the start; fewer than `nodes` when they change during the run.
    members: tuple[str, ...]
    clients: int
    ops: int
    fault_time: float
    schedule: tuple[FaultEvent, ...]

    def describe(self) -> str:
        lines = [
            f"seed {self.seed}: nodes {','.join(self.nodes)} (acceptors "
            f"{','.join(self.members)}{', changing' if self.changing else ''}), "
            f"{self.clients} clients, {self.ops} ops, faults for {self.fault_time:.1f}s",
            "fault schedule:",
        ]
        lines += [f"  {event}" for event in self.schedule]
        return "\n".join(lines)

    @property
    def changing(self) -> bool:
        return self.members != self.nodes


def draw_register_config(seed: int) -> RegisterConfig:
    rng = random.Random(f"register-{seed}")
    changing = rng.random() < 0.5
    nodes = tuple(f"n{i}" for i in range(5 if changing or rng.random() < 0.3 else 3))
    fault_time = round(rng.uniform(3.0, 12.0), 1)
    return RegisterConfig(
        seed=seed,
        nodes=nodes,
        members=nodes[:3] if changing else nodes,
        clients=rng.randint(2, 5),
        ops=rng.randint(30, 120),
        fault_time=fault_time,
        schedule=draw_schedule(rng, nodes, fault_time),
    )


@dataclasses.dataclass
class RegisterResult:
    config: RegisterConfig
    history: list[Op]
    verdict: Verdict
    problems: list[str]
    stats: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.verdict.ok and not self.problems

    def report(self) -> str:
        lines = [self.config.describe(), f"network: {self.stats}"]
        if not self.verdict.ok:
            lines.append(str(self.verdict))
        lines += self.problems
        return "\n".join(lines)


class Crashed(Exception):
    """The node a client went through crashed: the operation's outcome is unknown."""


class _Disk:
    """What survives a crash: each node's acceptor state and ballot counter."""

    def __init__(self) -> None:
        self.acceptors: dict[str, AcceptorState] = {}
        self.counters: dict[str, int] = {}


class _Attempt:
    def __init__(self, proposal: Proposal) -> None:
        self.proposal = proposal
        self.finished = trio.Event()
        self.conflict: Ballot | None = None
        self.in_doubt: InDoubt | None = None
        self.reconfigured: Reconfigured | None = None
        self.crashed = False


class _Node:
    """One member: an acceptor and a proposer, with only `_Disk` surviving a crash."""

    def __init__(self, node_id: str, sim: _Sim) -> None:
        self.node_id = node_id
        self.sim = sim
        self.rng = random.Random(f"{sim.config.seed}-{node_id}")
        self.up = False
        self.incarnation = 0
        self.acceptor = Acceptor(node_id, AcceptorState())
        self.ballots = Ballots(node_id)
        self.attempts: dict[Ballot, _Attempt] = {}
        self._changes = itertools.count()
        #: The acceptors this proposer asks first: the last it saw, not saved.
        self.view = sim.config.members

    def start(self) -> None:
        disk = self.sim.disk
        self.acceptor = Acceptor(self.node_id, disk.acceptors.get(self.node_id, AcceptorState()))
        self.ballots = Ballots(self.node_id, disk.counters.get(self.node_id, 0))
        self.attempts = {}
        self.view = self.sim.config.members
        self.up = True
        self.incarnation += 1
        self.sim.network.attach(self.node_id, self.deliver)

    def crash(self) -> None:
        self.up = False
        self.sim.network.detach(self.node_id)
        for attempt in self.attempts.values():
            attempt.crashed = True
            attempt.finished.set()
        self.attempts = {}

    def send(self, messages: Sequence[Message]) -> None:
        for message in messages:
            if message.dst == self.node_id:
                self.sim.nursery.start_soon(self._local, message)
            else:
                self.sim.network.transport(self.node_id).send(message)

    async def _local(self, message: Message) -> None:
        if self.up:
            self.deliver(message, None)

    def deliver(self, message: Message, _image: object) -> None:
        if isinstance(message, Prepare | Accept):
            answer = self.acceptor.handle(message)
            self.sim.disk.acceptors[self.node_id] = self.acceptor.state  # saved, then sent
            if isinstance(answer, Accepted):
                self.sim.note_accepted(message.ballot, message.value)
            self.send([answer])
            return
        attempt = self.attempts.get(message.ballot)
        if attempt is None:
            return
        try:
            self.send(attempt.proposal.receive(message))
        except Conflict as conflict:
            attempt.conflict = conflict.seen
            attempt.finished.set()
            return
        except InDoubt as doubt:
            attempt.in_doubt = doubt
            attempt.finished.set()
            return
        except Reconfigured as moved:
            attempt.reconfigured = moved
            attempt.finished.set()
            return
        if attempt.proposal.done:
            attempt.finished.set()

    async def propose(self, change: Change, read: bool = False) -> Any:
        """Apply `change` to the register (only ask, with `read`); retries with higher
        ballots until it is done. Raises Crashed if this node crashed meanwhile, InDoubt if a
        retry cannot tell."""
        above: Ballot | None = None
        incarnation = self.incarnation
        change_id = "" if read else f"{self.node_id}.{incarnation}.{next(self._changes)}"
        sent: int | None = None
        if self.rng.random() < STALE:  # as a node cut off for a while would
            self.view = self.rng.choice(self.sim.member_sets)
        joined: tuple[frozenset[str], ...] = ()  # the sets values named on the way
        while True:
            if not self.up or self.incarnation != incarnation:
                raise Crashed(self.node_id)
            ballot = self.ballots.next(above)
            self.sim.disk.counters[self.node_id] = self.ballots.saved_up_to
            members_of = _members_of if self.sim.config.changing else _unnamed
            proposal = Proposal(
                self.node_id, self.view, ballot, change, change_id, sent, members_of, joined
            )
            attempt = self.attempts[ballot] = _Attempt(proposal)
            try:
                self.send(proposal.start())
                with trio.move_on_after(ATTEMPT_TIMEOUT):
                    await attempt.finished.wait()
            finally:
                self.attempts.pop(ballot, None)
                sent = proposal.sent
            if attempt.crashed:
                raise Crashed(self.node_id)
            if attempt.in_doubt is not None:
                raise attempt.in_doubt
            if attempt.reconfigured is not None:
                joined += (frozenset(_members(attempt.reconfigured.value, self.view)),)
            if proposal.done:
                self.view = _members(proposal.value.value, self.view)
                if self.view not in self.sim.member_sets:
                    self.sim.member_sets.append(self.view)
                return proposal.result
            if attempt.conflict is not None:
                above = attempt.conflict
            await trio.sleep(self.rng.uniform(0.0, 0.05))  # dueling proposers draw apart


def _members(value: Any, otherwise: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(value[0]) if isinstance(value, tuple | list) else otherwise


def _members_of(value: Any) -> frozenset[str] | None:
    return frozenset(value[0]) if isinstance(value, tuple | list) else None


def _unnamed(value: Any) -> None:
    return None


def _on_x(change: Change, members: tuple[str, ...]) -> Change:
    """`change` made to the x of a (members, x) value (None: (`members`, None))."""

    def lifted(value: Any) -> tuple[Any, Any]:
        current, x = value if value is not None else (members, None)
        after, result = change(x)
        return (current, after), result

    return lifted


def _one_acceptor_more_or_less(
    nodes: tuple[str, ...], members: tuple[str, ...], rng: random.Random
) -> Change:
    """Add a node that is not an acceptor or remove one that is, keeping three to five (the
    value None is (`members`, None))."""
    pick = rng.random()

    def change(value: Any) -> tuple[Any, Any]:
        current, x = value if value is not None else (members, None)
        outside = [node for node in nodes if node not in current]
        if outside and (len(current) <= 3 or pick < 0.5):
            return (tuple(sorted((*current, outside[int(pick * len(outside))]))), x), None
        gone = current[int(pick * len(current))]
        return (tuple(node for node in current if node != gone), x), None

    return change


def _operation(rng: random.Random) -> tuple[str, tuple[Any, ...], Change]:
    kind = rng.choice([READ, WRITE, CAS, CAS, INCR])
    if kind == READ:
        return kind, (), lambda value: (value, value)
    if kind == WRITE:
        new = rng.randint(0, 9)
        return kind, (new,), lambda value: (new, "ok")
    if kind == CAS:
        old, new = rng.choice([None, *range(10)]), rng.randint(0, 9)
        return kind, (old, new), lambda value: (new, True) if value == old else (value, False)

    def increment(value: Any) -> tuple[Any, Any]:
        after = (value if isinstance(value, int) else 0) + 1
        return after, after

    return kind, (), increment


class _Sim:
    def __init__(self, config: RegisterConfig, nursery: trio.Nursery) -> None:
        self.config = config
        self.nursery = nursery
        self.rng = random.Random(f"faults-{config.seed}")
        self.network = SimNetwork(random.Random(f"network-{config.seed}"), config.nodes, CALM)
        self.disk = _Disk()
        self.nodes = {node_id: _Node(node_id, self) for node_id in config.nodes}
        self.history: list[Op] = []
        self.problems: list[str] = []
        self._stamps = itertools.count()
        self._op_ids = itertools.count()
        self._chosen: dict[Ballot, Any] = {}
        #: Every set of acceptors the register has had: a proposer may start from any.
        self.member_sets: list[tuple[str, ...]] = [config.members]
        self.client_rngs = [
            random.Random(f"client-{config.seed}-{n}") for n in range(config.clients)
        ]

    def note_accepted(self, ballot: Ballot, value: Any) -> None:
        """Paxos's safety at the level of one ballot: it carries one value only."""
        first = self._chosen.setdefault(ballot, value)
        if first != value:
            self.problems.append(f"ballot {ballot} accepted with {first!r} and {value!r}")

    async def run_schedule(self) -> None:
        for event in self.config.schedule:
            await trio.sleep_until(event.at)
            node = event.node
            if node == "leader":  # no leader here: any node
                node = self.rng.choice(self.config.nodes)
            if event.action == "faults":
                assert event.faults is not None
                self.network.faults = event.faults
            elif event.action == "isolate":
                assert node is not None
                rest = tuple(n for n in self.config.nodes if n != node)
                self.network.partition([(node,), rest])
                self.nursery.start_soon(self._heal_after, event.length)
            elif event.action == "split":
                self.network.partition(event.groups)
                self.nursery.start_soon(self._heal_after, event.length)
            elif event.action == "crash":
                assert node is not None
                self.nodes[node].crash()
                self.nursery.start_soon(self._restart_after, node, event.length)

    async def _heal_after(self, length: float) -> None:
        await trio.sleep(length)
        self.network.heal()

    async def _restart_after(self, node_id: str, length: float) -> None:
        await trio.sleep(length)
        node = self.nodes[node_id]
        if not node.up and trio.current_time() < self.config.fault_time:
            node.start()

    def heal(self) -> None:
        self.network.heal()
        self.network.faults = CALM
        for node in self.nodes.values():
            if not node.up:
                node.start()

    async def change_acceptors(self) -> None:
        """While faults last, now and then add or remove one acceptor through any node."""
        rng = random.Random(f"acceptors-{self.config.seed}")
        while trio.current_time() < self.config.fault_time:
            await trio.sleep(rng.uniform(0.05, 0.5))
            up = [node for node in self.nodes.values() if node.up]
            if not up or not self.config.changing:
                continue
            node = rng.choice(up)
            change = _one_acceptor_more_or_less(self.config.nodes, self.config.members, rng)
            with contextlib.suppress(Crashed, InDoubt):
                await node.propose(change)

    async def client(self, number: int, ops: int, until: float | None) -> None:
        """Issue `ops` operations one after another, none after `until` if given (else only
        completed ones count). Each runs until it is done, its node crashes or it is in
        doubt; the outcome of the last two is unknown."""
        rng = self.client_rngs[number]
        issued = 0
        while issued < ops and (until is None or trio.current_time() < until):
            up = [node for node in self.nodes.values() if node.up]
            if not up:
                await trio.sleep(0.05)
                continue
            node = rng.choice(up)
            kind, args, change = _operation(rng)
            if self.config.changing:
                change = _on_x(change, self.config.members)
            invoke, invoke_time = next(self._stamps), trio.current_time()
            op_id = next(self._op_ids)
            issued += 1
            result, known = None, False
            try:
                result = await node.propose(change, read=kind == READ)
                known = True
            except (Crashed, InDoubt):
                issued -= until is None
            finally:  # cancelled too: it may have been applied
                complete = (next(self._stamps), trio.current_time()) if known else (None, None)
                self.history.append(
                    Op(op_id, number, kind, KEY, args, result, invoke, complete[0],
                       invoke_time, complete[1])
                )  # fmt: skip
            await trio.sleep(rng.uniform(0.0, 0.05))


def simulate_register(config: RegisterConfig) -> RegisterResult:
    """Run `config` to the end and collect what it showed."""
    assert _trio_run._ALLOW_DETERMINISTIC_SCHEDULING, "hypothesis's trio plugin did not load"
    _trio_run._r.seed(config.seed)
    box: list[_Sim] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            sim = _Sim(config, nursery)
            box.append(sim)
            await nursery.start(sim.network.run)
            for node in sim.nodes.values():
                node.start()
            with trio.move_on_at(config.fault_time + SETTLE_LIMIT) as settling:
                async with trio.open_nursery() as phase:
                    phase.start_soon(sim.run_schedule)
                    phase.start_soon(sim.change_acceptors)
                    for number in range(config.clients):
                        share = config.ops // config.clients
                        phase.start_soon(sim.client, number, share, config.fault_time)
                    await trio.sleep_until(config.fault_time)
                    sim.heal()  # operations still running go on
                async with trio.open_nursery() as phase:
                    for number in range(config.clients):
                        phase.start_soon(sim.client, number, POST_HEAL_OPS, None)
            if settling.cancelled_caught:
                sim.problems.append(
                    f"clients did not complete {POST_HEAL_OPS} operations each within "
                    f"{SETTLE_LIMIT:.0f}s after healing"
                )
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    sim = box[0]
    return RegisterResult(config, sim.history, check(sim.history), sim.problems,
                          dict(sim.network.stats))  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.sim.paxos SEED...``: replay seeds and print what happened."""
    import argparse

    from tests.sim.seeds import print_run

    parser = argparse.ArgumentParser(prog="python -m tests.sim.paxos")
    parser.add_argument("seeds", nargs="+", type=int)
    args = parser.parse_args(argv)
    failed = 0
    for seed in args.seeds:
        result = simulate_register(draw_register_config(seed))
        failed += not result.ok
        print_run(result.report(), result.history, result.ok)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
