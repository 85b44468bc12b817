"""A simulation's configuration and fault schedule, all drawn from its seed."""

from __future__ import annotations

import dataclasses
import random

from tests.sim.network import Faults

__all__ = ["Config", "FaultEvent", "draw_config", "draw_faults", "draw_schedule"]


@dataclasses.dataclass(frozen=True)
class FaultEvent:
    """One scheduled fault. ``node`` may be "leader": whoever leads at that moment."""

    at: float
    action: str  # "faults", "isolate", "split", "crash", "wipe", "rewind", "full", "move"
    node: str | None = None
    groups: tuple[tuple[str, ...], ...] = ()
    faults: Faults | None = None
    length: float = 0.0  # how long a partition or a crash lasts
    age: float = 0.0  # how old the copy of its storage a rewound node restarts with is

    def __str__(self) -> str:
        what = {
            "faults": f"network {self.faults}",
            "isolate": f"isolate {self.node} for {self.length:.2f}s",
            "split": f"partition {' | '.join(','.join(g) for g in self.groups)} "
            f"for {self.length:.2f}s",
            "crash": f"crash {self.node}, restart after {self.length:.2f}s",
            "wipe": f"crash {self.node}, restart after {self.length:.2f}s with nothing",
            "full": f"the disk of {self.node} fails for {self.length:.2f}s",
            "rewind": f"crash {self.node}, restart after {self.length:.2f}s with its storage "
            f"as it was {self.age:.2f}s before",
            "move": f"the group wanted gets another node in place of {self.node}",
        }[self.action]
        return f"t={self.at:7.3f} {what}"


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run is made of, drawn from its seed."""

    seed: int
    nodes: tuple[str, ...]
    keys: tuple[str, ...]
    clients: int
    ops: int  # issued before healing (at most)
    post_heal_ops: int  # per client, after healing
    fault_time: float
    op_timeout: float
    snapshot_threshold: int
    durable_apply: bool
    wire: bool  # messages go through the wire encoding and msgpack
    schedule: tuple[FaultEvent, ...]
    # The group's first configuration, when it is not all of `nodes`: the others are spares,
    # and "move" events change the group the cluster wants, which the leader follows.
    founders: tuple[str, ...] = ()

    def first_voters(self) -> tuple[str, ...]:
        """The configuration every node starts from."""
        return self.founders or self.nodes

    def describe(self) -> str:
        lines = [
            f"seed {self.seed}: nodes {','.join(self.nodes)}, {self.clients} clients, "
            f"{self.ops} ops on keys {','.join(self.keys)} + {self.post_heal_ops}/client after "
            f"healing, faults for {self.fault_time:.1f}s, op timeout {self.op_timeout:.1f}s, "
            f"snapshot every {self.snapshot_threshold}, "
            f"durable apply {self.durable_apply}, wire {self.wire}",
        ]
        if self.founders:
            lines.append(f"first voters {','.join(self.founders)}; the others are spares")
        lines.append("fault schedule:")
        lines += [f"  {event}" for event in self.schedule]
        lines.append(f"  t={self.fault_time:7.3f} heal everything, restart crashed nodes")
        return "\n".join(lines)


def draw_faults(rng: random.Random) -> Faults:
    lo = rng.uniform(0.001, 0.01)
    hi = lo + rng.choice([0.005, 0.02, 0.08, 0.3])
    return Faults(
        drop=rng.choice([0.0, rng.uniform(0, 0.2)]),
        duplicate=rng.choice([0.0, rng.uniform(0, 0.1)]),
        delay=(round(lo, 4), round(hi, 4)),
    )


def draw_schedule(
    rng: random.Random, nodes: tuple[str, ...], duration: float
) -> tuple[FaultEvent, ...]:
    events = [FaultEvent(0.0, "faults", faults=draw_faults(rng))]
    t = 0.0
    while True:
        t += rng.expovariate(1 / 1.5)
        if t >= duration:
            break
        at, length = round(t, 3), round(rng.uniform(0.2, 4.0), 3)
        kind = rng.random()
        if kind < 0.25:
            events.append(
                FaultEvent(at, "isolate", node=rng.choice([*nodes, "leader"]), length=length)
            )
        elif kind < 0.45:
            shuffled = list(nodes)
            rng.shuffle(shuffled)
            cut = rng.randrange(1, len(nodes))
            groups = (tuple(sorted(shuffled[:cut])), tuple(sorted(shuffled[cut:])))
            events.append(FaultEvent(at, "split", groups=groups, length=length))
        elif kind < 0.75:
            target = rng.choice([*nodes, "leader", "leader"])
            events.append(FaultEvent(at, "crash", node=target, length=length))
        elif kind < 0.9:
            events.append(FaultEvent(at, "faults", faults=draw_faults(rng)))
    return tuple(events)


def _draw_storage_faults(
    rng: random.Random, nodes: tuple[str, ...], duration: float
) -> list[FaultEvent]:
    """At least one restart with nothing and one with an older copy of the storage in every
    run, sometimes more, and in half the runs a disk that fails for a while; each on any node
    (the leader included)."""
    events = []
    actions = ("wipe", "rewind") * rng.choice([1, 1, 2]) + ("full",) * rng.choice([0, 1])
    for action in actions:
        at = round(rng.uniform(0.1, 0.8) * duration, 3)
        target = rng.choice([*nodes, "leader"])
        length = round(rng.uniform(0.2, 2.0), 3)
        age = round(rng.uniform(0.5, 6.0), 3) if action == "rewind" else 0.0
        events.append(FaultEvent(at, action, node=target, length=length, age=age))
    return events


def _draw_moves(rng: random.Random, founders: tuple[str, ...], duration: float) -> list[FaultEvent]:
    """One to three changes of the group the cluster wants, each taking a member (maybe the
    leader) out for another node, at any time of the fault phase."""
    return [
        FaultEvent(
            round(rng.uniform(0.05, 0.8) * duration, 3), "move", rng.choice([*founders, "leader"])
        )
        for _ in range(rng.randint(1, 3))
    ]


def draw_config(seed: int) -> Config:
    """The run of ``seed``: group, workload and fault schedule.

    In three runs in ten the group changes (one or two spare nodes, and "move" events); those
    runs lose no storage, whose fault model assumes a fixed group. The others are drawn as
    before the group could change."""
    rng = random.Random(f"config-{seed}")
    founders = tuple(f"n{i}" for i in range(5 if rng.random() < 0.25 else 3))
    fault_time = round(rng.uniform(5.0, 20.0), 1)
    # Drawn apart, so that adding them left every other fault of a seed as it was.
    members = random.Random(f"members-{seed}")
    spares = tuple(f"s{i}" for i in range(members.choice([1, 2]))) if members.random() < 0.3 else ()
    nodes = founders + spares
    if spares:
        changes = _draw_moves(members, founders, fault_time)
    else:
        changes = _draw_storage_faults(random.Random(f"storage-{seed}"), nodes, fault_time)
    return Config(
        seed=seed,
        nodes=nodes,
        keys=tuple(f"k{i}" for i in range(rng.randint(1, 3))),
        clients=rng.randint(2, 4),
        ops=rng.randint(50, 200),
        post_heal_ops=2,
        fault_time=fault_time,
        op_timeout=rng.choice([1.0, 2.0, 3.0]),
        snapshot_threshold=rng.choice([5, 20, 100, 1000]),
        durable_apply=rng.random() < 0.5,
        wire=rng.random() < 0.3,
        schedule=tuple(sorted((*draw_schedule(rng, nodes, fault_time), *changes), key=_at)),
        founders=founders if spares else (),
    )


def _at(event: FaultEvent) -> float:
    return event.at
