"""Deterministic simulation of the cluster map's CASPaxos register under faults.

Replay one seed:    pytest 'tests/sim/test_paxos_sim.py::test_register_sim[seed_7]'
or any seeds:       RINGFS_SIM_SEEDS=7,2024 pytest tests/sim/test_paxos_sim.py
or, to read it all: python -m tests.sim.paxos 7
"""

from __future__ import annotations

import pytest

from tests.sim.paxos import draw_register_config, simulate_register
from tests.sim.seeds import seed_params

# The default suite: about 0.1 s per seed on a small machine.
DEFAULT_SEEDS = range(200)
# The slow tier (pytest -m slow).
SLOW_SEEDS = range(10_000, 13_000)


def _check(seed: int, test: str) -> None:
    result = simulate_register(draw_register_config(seed))
    if not result.ok:
        replay = f"pytest 'tests/sim/test_paxos_sim.py::{test}[seed_{seed}]'"
        pytest.fail(f"{result.report()}\nreplay: {replay}", pytrace=False)


@pytest.mark.parametrize("seed", seed_params(DEFAULT_SEEDS))
def test_register_sim(seed: int) -> None:
    _check(seed, "test_register_sim")


@pytest.mark.slow
@pytest.mark.parametrize("seed", seed_params(SLOW_SEEDS))
def test_register_sim_slow(seed: int) -> None:
    _check(seed, "test_register_sim_slow")
