"""What the simulation runs share: the seeds a test runs, and how a replayed run is printed."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import pytest

from tests.sim.linearizability import Op


def seed_params(default: Iterable[int]) -> list[pytest.ParameterSet]:
    """The seeds to run: `default`, or those listed in RINGFS_SIM_SEEDS (to replay some)."""
    chosen = os.environ.get("RINGFS_SIM_SEEDS")
    seeds = [int(s) for s in chosen.split(",")] if chosen else list(default)
    return [pytest.param(seed, id=f"seed_{seed}") for seed in seeds]


def print_run(report: str, history: Sequence[Op], ok: bool) -> None:
    """A replayed run as `python -m tests.sim....` prints it: what happened, the whole
    history in real-time order, and the verdict."""
    print(report)
    print("history:")
    for op in sorted(history, key=lambda o: o.invoke):
        print(f"  {op}")
    print("ok" if ok else "FAILED")
