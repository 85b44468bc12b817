"""The simulation harness: a Raft group, its clients and its faults, in one trio run.

`simulate(draw_config(seed))` runs what the seed draws: the group (3 or 5 nodes, and in some
runs one or two spares), the network's faults, a fault schedule (partitions that heal, crashes
and restarts of any node including the leader, restarts with nothing or with an older copy of
the node's storage, or, in the runs with spares, changes of the group the cluster wants, which
the leader's `MetaMembership` follows as on a node), and a
register/counter workload run by a few clients through whichever node they believe leads.
Then it heals everything, lets the group settle, and returns a `SimResult`: the client-visible
history, the invariant violations the `Monitor` saw, and what happened.

Determinism: time is trio's MockClock, every random choice comes from generators seeded from
the seed, and importing hypothesis makes trio's scheduler deterministic (trio registers a
hypothesis plugin that sorts each batch of runnable tasks and shuffles it with a generator we
seed here). So one seed replays the same run.

A crash cancels the node's scope and keeps only its `Disk`: what `RaftStorage.save` and
`compact` got, and the state machine's image as of its last snapshot (or, in runs where
applying is durable, as of its last apply). The storage faults (a disk that fails for a while,
a restart with nothing or with an older copy of the disk) are in `tests.sim.lost_storage`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hypothesis  # noqa: F401  (its trio plugin makes the scheduler deterministic)
import msgpack
import trio
import trio._core._run as _trio_run
import trio.testing

from ringfs.node.meta.membership import MetaMembership
from ringfs.node.raft.core import (
    LEADER,
    Entry,
    Message,
    NotLeader,
    Raft,
    message_from_wire,
    message_to_wire,
)
from ringfs.node.raft.shell import LeadershipLost, Loaded, RaftNode
from tests.sim.durable import Disk, KVMachine, MemoryStorage
from tests.sim.invariants import Monitor
from tests.sim.linearizability import Op, Verdict, check
from tests.sim.lost_storage import StorageFaults
from tests.sim.network import CALM, SimNetwork
from tests.sim.schedule import Config, draw_config

__all__ = ["Config", "SimResult", "draw_config", "simulate"]

TICK = 0.05  # seconds per Raft tick: elections take 10-20 ticks, heartbeats 2
SETTLE_LIMIT = 30.0  # after healing, the group must serve every client within this


def _incarnation() -> int:
    """Each start of a node gets a higher number: the mock clock's nanoseconds (plus one, as
    0 means "none")."""
    return int(trio.current_time() * 1e9) + 1


# -- the run ---------------------------------------------------------------------------------


@dataclasses.dataclass
class SimResult:
    """What one run showed; `ok` if it broke no invariant, stayed linearizable and recovered."""

    config: Config
    history: list[Op]
    violations: list[str]
    events: list[str]
    verdict: Verdict
    progress: list[str]  # what failed to happen after healing
    stats: dict[str, int]
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return not self.violations and self.verdict.ok and not self.progress and self.error is None

    def digest(self) -> str:
        """Everything observable, to compare two runs of one seed."""
        return "\n".join([*map(repr, self.history), *self.events, repr(sorted(self.stats.items()))])

    def report(self, replay: str) -> str:
        verdict = "passed" if self.ok else "failed"
        lines = [f"simulation of seed {self.config.seed} {verdict}", f"replay: {replay}", ""]
        if self.error is not None:
            lines.append("the run raised:")
            lines.append("".join(traceback.format_exception(self.error)).rstrip())
        lines += [f"invariant violated: {v}" for v in self.violations]
        if not self.verdict.ok:
            lines.append(str(self.verdict))
        lines += [f"no progress: {p}" for p in self.progress]
        lines += ["", self.config.describe(), "", "what happened:"]
        lines += [f"  {e}" for e in self.events]
        lines.append(f"network: {dict(sorted(self.stats.items()))}")
        done = sum(1 for op in self.history if not op.unknown)
        lines.append(f"history: {len(self.history)} ops, {done} with a known outcome")
        return "\n".join(lines)


class _SimNode(RaftNode):
    """A `RaftNode` that shows each new core (a storage failure makes one) to `observe`."""

    observe: Callable[[Raft], None] | None = None

    def _open(self, loaded: Loaded, applied: int) -> None:
        super()._open(loaded, applied)
        if self.observe is not None:
            self.observe(self.raft)


class _Cluster:
    """The group under test: live nodes, their disks, the network, the fault schedule.
    Snapshot images are files under `files`."""

    def __init__(self, config: Config, files: Path) -> None:
        self.config = config
        self.files = files
        self._file_names = itertools.count()
        master = random.Random(f"run-{config.seed}")
        self.rng = random.Random(master.getrandbits(64))
        self.monitor = Monitor(trio.current_time)
        self.network = SimNetwork(random.Random(master.getrandbits(64)), config.nodes, CALM, files)
        self.client_rngs = [random.Random(master.getrandbits(64)) for _ in range(config.clients)]
        self.disks = {n: Disk(MemoryStorage()) for n in config.nodes}
        self.storage_faults = StorageFaults(self)
        self.live: dict[str, RaftNode] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._partition_generation = 0
        self._stamps = itertools.count()
        self._op_ids = itertools.count()
        self.history: list[Op] = []
        self.healed_at = 0.0
        # The group the cluster wants (the map's meta group): "move" events change it, and
        # each node's `MetaMembership` brings the group there while it leads.
        self.wanted = config.first_voters()

    def stamp(self) -> int:
        """The real-time order of client events (several can share a clock reading)."""
        return next(self._stamps)

    def op_id(self) -> int:
        return next(self._op_ids)

    # -- nodes -------------------------------------------------------------------------------

    async def start(self, node_id: str) -> None:
        assert self._nursery is not None
        assert node_id not in self.live
        disk = self.disks[node_id]
        machine = KVMachine(node_id, disk, self.monitor, self.config.durable_apply, self._new_file)
        node = _SimNode(
            node_id,
            self.config.first_voters(),
            disk.storage,
            machine,
            self.network.transport(node_id),
            rng=random.Random(self.rng.getrandbits(64)),
            tick_interval=TICK,
            snapshot_threshold=self.config.snapshot_threshold,
            blocking_io=False,
            incarnation=_incarnation,
            peers=lambda: self.config.nodes,
        )
        self._instrument(node_id, node)
        self.monitor.restarted(node_id, machine.applied_index())
        await self._nursery.start(self._run_node, node_id, node, name=f"sim-node {node_id}")
        self.live[node_id] = node
        self.network.attach(node_id, self._receiver(node))

    def _new_file(self) -> Path:
        return self.files / f"image-{next(self._file_names)}"

    def _receiver(self, node: RaftNode) -> Callable[[Any, Path | None], None]:
        if not self.config.wire:
            return node.deliver

        def deliver(message: Message, snapshot: Path | None) -> None:
            packed = msgpack.packb(message_to_wire(message), use_bin_type=True)
            node.deliver(message_from_wire(msgpack.unpackb(packed, raw=False)), snapshot)

        return deliver

    def _instrument(self, node_id: str, node: _SimNode) -> None:
        monitor, storage = self.monitor, self.disks[node_id].storage

        def observe(raft: Raft) -> None:
            for name in ("tick", "step", "propose", "read_index"):
                call = getattr(raft, name)

                def observed(*args: Any, _call: Any = call) -> Any:
                    try:
                        return _call(*args)
                    finally:
                        monitor.observe_role(node_id, raft)

                setattr(raft, name, observed)

        def saved(appended: tuple[Entry, ...]) -> None:
            monitor.after_save(node_id, node.raft, storage.snapshot, storage.log, appended)

        node.observe = observe
        observe(node.raft)
        storage.on_save = saved

    async def _run_node(
        self, node_id: str, node: RaftNode, *, task_status: trio.TaskStatus[None]
    ) -> None:
        with trio.CancelScope() as scope:
            self._scopes[node_id] = scope
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                nursery.start_soon(MetaMembership(node, lambda: self.wanted).run)
                task_status.started()

    def crash(self, node_id: str) -> None:
        if node_id not in self.live:
            return
        self.monitor.note(f"crash {node_id} (term {self.live[node_id].raft.term})")
        del self.live[node_id]
        self.network.detach(node_id)
        self._scopes.pop(node_id).cancel()
        self.disks[node_id].storage.on_save = None

    async def restart(self, node_id: str) -> None:
        if node_id in self.live:
            return
        self.monitor.note(f"restart {node_id}")
        await self.start(node_id)

    def leader(self) -> str | None:
        """The live leader with the highest term, if any."""
        leaders = [(n.raft.term, i) for i, n in self.live.items() if n.raft.role == LEADER]
        return max(leaders)[1] if leaders else None

    # -- faults ------------------------------------------------------------------------------

    def resolve(self, node: str | None) -> str | None:
        """The node an event names: "leader" is whoever leads now (None if nobody)."""
        if node == "leader":
            return self.leader()
        return node

    async def run_schedule(self) -> None:
        assert self._nursery is not None
        for event in self.config.schedule:
            await trio.sleep_until(event.at)
            while (hold := self.storage_faults.hold) is not None:
                await hold.wait()
            if self.healed_at:
                return  # the fault phase is over (an event due at its very end comes too late)
            if event.action == "faults":
                assert event.faults is not None
                self.network.faults = event.faults
                self.monitor.note(f"network {event.faults}")
            elif event.action in ("isolate", "split"):
                groups = event.groups
                if event.action == "isolate":
                    target = self.resolve(event.node)
                    if target is None:
                        self.monitor.note("isolate leader: there is none")
                        continue
                    groups = ((target,), tuple(n for n in self.config.nodes if n != target))
                self._partition_generation += 1
                self.network.partition(groups)
                self.monitor.note(f"partition {' | '.join(','.join(g) for g in groups)}")
                self._nursery.start_soon(self._heal_later, event.length, self._partition_generation)
            elif event.action == "crash":
                target = self.resolve(event.node)
                if target is None or target not in self.live:
                    self.monitor.note(f"crash {event.node}: none running")
                    continue
                self.crash(target)
                self._nursery.start_soon(self._restart_later, target, event.length)
            elif event.action in ("wipe", "rewind"):
                self._nursery.start_soon(self.storage_faults.lose, event)
            elif event.action == "full":
                self._nursery.start_soon(self.storage_faults.fail, event)
            elif event.action == "move":
                self.move(self.resolve(event.node))

    def move(self, target: str | None) -> None:
        """The group wanted gets another node in place of `target` (a member drawn at random
        if `target` is none)."""
        if target not in self.wanted:
            target = self.rng.choice(self.wanted)
        other = self.rng.choice([n for n in self.config.nodes if n not in self.wanted])
        self.wanted = tuple(other if n == target else n for n in self.wanted)
        self.monitor.note(f"the group wanted is {','.join(self.wanted)} ({other} for {target})")

    async def _heal_later(self, after: float, generation: int) -> None:
        await trio.sleep(after)
        if generation == self._partition_generation and self.healed_at == 0.0:
            self.network.heal()
            self.monitor.note("partition healed")

    async def _restart_later(self, node_id: str, after: float) -> None:
        await trio.sleep(after)
        if self.healed_at == 0.0:
            await self.restart(node_id)

    async def heal(self) -> None:
        self.healed_at = trio.current_time()
        self._partition_generation += 1
        self.network.heal()
        self.network.faults = CALM
        for disk in self.disks.values():
            disk.storage.failing = False
        self.monitor.note("heal everything")
        for node_id in self.config.nodes:
            await self.restart(node_id)

    # -- convergence -------------------------------------------------------------------------

    async def wait_converged(self, deadline: float) -> str | None:
        """Wait until the group is the one wanted and every member applied the same state;
        None, or what did not converge."""
        while True:
            leader = self.leader()
            if leader is not None:
                raft = self.live[leader].raft
                members = [self.live[n] for n in raft.voters if n in self.live]
                states = {
                    (n.machine.applied_index(), json.dumps(n.machine.data, sort_keys=True))  # type: ignore[attr-defined]
                    for n in members
                }
                if (
                    set(raft.voters) == set(self.wanted)
                    and len(members) == len(raft.voters)
                    and len(states) == 1
                    and next(iter(states))[0] == raft.commit_index
                ):
                    return None
            if trio.current_time() >= deadline:
                status = {i: n.status() for i, n in self.live.items()}
                return (
                    f"the nodes did not converge after healing to the group "
                    f"{','.join(self.wanted)}: {status}"
                )
            await trio.sleep(0.25)


# -- clients ---------------------------------------------------------------------------------


class _Client:
    """Runs ops one at a time through the node it believes leads, and records the history.

    NotLeader means the op did not happen (it is left out, and the client follows the hint);
    a timeout or LeadershipLost leaves the outcome unknown.
    """

    def __init__(self, number: int, cluster: _Cluster, rng: random.Random) -> None:
        self.number = number
        self.cluster = cluster
        self.rng = rng
        self.target = rng.choice(cluster.config.nodes)
        self.completed_after_heal = 0

    def _retarget(self, hint: str | None) -> None:
        nodes = self.cluster.config.nodes
        if hint is not None and hint != self.target:
            self.target = hint
        else:
            self.target = self.rng.choice([n for n in nodes if n != self.target])

    def _next_op(self) -> tuple[str, str, tuple[Any, ...]]:
        key = self.rng.choice(self.cluster.config.keys)
        kind = self.rng.choices(["read", "write", "cas", "incr"], [4, 2, 2, 3])[0]
        if kind == "write":
            return kind, key, (self.rng.randrange(6),)
        if kind == "cas":
            return kind, key, (self.rng.choice([None, *range(6)]), self.rng.randrange(6))
        return kind, key, ()

    async def attempt(self) -> bool | None:
        """Run one fresh op: True if its outcome is known, False if unknown, None if refused."""
        config = self.cluster.config
        node = self.cluster.live.get(self.target)
        if node is None:
            self._retarget(None)
            return None
        kind, key, args = self._next_op()
        op_id = self.cluster.op_id()
        via_log = kind != "read" or self.rng.random() < 0.2
        command = json.dumps({"id": op_id, "op": kind, "key": key, "args": list(args)}).encode()
        invoke, invoke_time = self.cluster.stamp(), trio.current_time()
        result: Any = None
        known = False
        with trio.move_on_after(config.op_timeout):
            try:
                if via_log:
                    result = await node.apply(command)
                else:
                    result = await node.read(lambda m: m.get(key))  # type: ignore[attr-defined]
                known = True
            except NotLeader as exc:
                self._retarget(exc.leader)
                return None
            except LeadershipLost:
                pass
        if not known:
            self._retarget(None)
        self.cluster.history.append(
            Op(
                op_id,
                self.number,
                kind,
                key,
                args,
                result,
                invoke,
                self.cluster.stamp() if known else None,
                invoke_time,
                trio.current_time() if known else None,
            )
        )
        return known

    async def run_faulty(self, ops: int, until: float) -> None:
        """Issue up to ``ops`` ops until ``until``, with pauses that spread them out."""
        pause = until / max(ops, 1)
        issued = 0
        while issued < ops and trio.current_time() < until:
            if await self.attempt() is None:
                await trio.sleep(self.rng.uniform(0.01, 0.1))
            else:
                issued += 1
                await trio.sleep(self.rng.uniform(0, pause))

    async def run_healed(self, ops: int) -> None:
        """After healing: keep trying until ``ops`` ops completed with a known outcome."""
        while self.completed_after_heal < ops:
            outcome = await self.attempt()
            if outcome:
                self.completed_after_heal += 1
            else:
                await trio.sleep(self.rng.uniform(0.01, 0.1))


# -- entry point -----------------------------------------------------------------------------


def simulate(config: Config) -> SimResult:
    """Run ``config`` to the end and collect what it showed."""
    assert _trio_run._ALLOW_DETERMINISTIC_SCHEDULING, "hypothesis's trio plugin did not load"
    _trio_run._r.seed(config.seed)
    cluster_box: list[_Cluster] = []
    error: BaseException | None = None
    progress: list[str] = []

    async def main(files: Path) -> None:
        cluster = _Cluster(config, files)
        cluster_box.append(cluster)
        clients = [_Client(i, cluster, rng) for i, rng in enumerate(cluster.client_rngs)]
        async with trio.open_nursery() as nursery:
            cluster._nursery = nursery
            await nursery.start(cluster.network.run)
            nursery.start_soon(cluster.storage_faults.record_disks)
            for node_id in config.nodes:
                await cluster.start(node_id)
            async with trio.open_nursery() as phase:
                phase.start_soon(cluster.run_schedule)
                for client in clients:
                    share = config.ops // config.clients
                    phase.start_soon(client.run_faulty, share, config.fault_time)
                await trio.sleep_until(config.fault_time)
                await cluster.heal()
            deadline = trio.current_time() + SETTLE_LIMIT
            with trio.move_on_at(deadline):
                async with trio.open_nursery() as phase:
                    for client in clients:
                        phase.start_soon(client.run_healed, config.post_heal_ops)
            for client in clients:
                if client.completed_after_heal < config.post_heal_ops:
                    progress.append(
                        f"client {client.number} completed {client.completed_after_heal} of "
                        f"{config.post_heal_ops} ops in the {SETTLE_LIMIT:.0f}s after healing"
                    )
            if not progress:
                stuck = await cluster.wait_converged(trio.current_time() + SETTLE_LIMIT)
                if stuck is not None:
                    progress.append(stuck)
            nursery.cancel_scope.cancel()

    try:
        with tempfile.TemporaryDirectory(prefix="ringfs-sim-") as files:
            trio.run(main, Path(files), clock=trio.testing.MockClock(autojump_threshold=0))
    except Exception as exc:  # the report carries it, with the seed and the schedule
        error = exc
    cluster = cluster_box[0]
    cluster.monitor.finish()
    return SimResult(
        config=config,
        history=cluster.history,
        violations=cluster.monitor.violations,
        events=cluster.monitor.events,
        verdict=check(cluster.history),
        progress=progress,
        stats=dict(cluster.network.stats),
        error=error,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.sim.cluster [--digest] SEED...``: replay seeds and print what happened."""
    import argparse
    import hashlib

    from tests.sim.seeds import print_run

    parser = argparse.ArgumentParser(prog="python -m tests.sim.cluster")
    parser.add_argument("--digest", action="store_true", help="print only a hash of the run")
    parser.add_argument("seeds", nargs="+", type=int)
    args = parser.parse_args(argv)
    failed = 0
    for seed in args.seeds:
        result = simulate(draw_config(seed))
        failed += not result.ok
        if args.digest:
            print(seed, hashlib.sha256(result.digest().encode()).hexdigest())
            continue
        print_run(result.report(f"python -m tests.sim.cluster {seed}"), result.history, result.ok)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
