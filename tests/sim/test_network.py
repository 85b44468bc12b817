"""The simulated network on its own, with stand-in nodes."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.sim.network import Faults, SimNetwork

NODES = ("a", "b", "c")


@dataclasses.dataclass(frozen=True)
class Msg:
    src: str
    dst: str
    n: int


def _wire(network: SimNetwork) -> dict[str, list[tuple[float, Msg, bytes | None]]]:
    """What each node received: a snapshot image as the bytes of the file it was given."""
    inbox: dict[str, list[tuple[float, Msg, bytes | None]]] = {n: [] for n in NODES}
    for node in NODES:

        def deliver(message: Msg, snapshot: Path | None, node: str = node) -> None:
            image = None if snapshot is None else snapshot.read_bytes()
            inbox[node].append((trio.current_time(), message, image))

        network.attach(node, deliver)
    return inbox


async def _settle() -> None:
    await trio.sleep(10)


async def test_delivers_after_a_delay_within_the_range(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    network = SimNetwork(random.Random(1), NODES, Faults(delay=(0.5, 1.0)), tmp_path)
    inbox = _wire(network)
    image = tmp_path / "image"
    image.write_bytes(b"img")
    async with trio.open_nursery() as nursery:
        await nursery.start(network.run)
        start = trio.current_time()
        for n in range(50):
            network.transport("a").send(Msg("a", "b", n), image if n == 0 else None)
        await _settle()
        nursery.cancel_scope.cancel()
    arrivals = inbox["b"]
    assert sorted(m.n for _, m, _ in arrivals) == list(range(50))
    assert all(0.5 <= t - start <= 1.0 for t, _, _ in arrivals)
    assert [m.n for _, m, _ in arrivals] != list(range(50)), "independent delays reorder"
    assert [s for _, m, s in arrivals if m.n == 0] == [b"img"]
    assert inbox["a"] == inbox["c"] == []


async def test_drops_and_duplicates_at_about_the_given_rates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork(random.Random(2), NODES, Faults(drop=0.2, duplicate=0.1))
    inbox = _wire(network)
    async with trio.open_nursery() as nursery:
        await nursery.start(network.run)
        for n in range(2000):
            network.transport("a").send(Msg("a", "c", n), None)
        await _settle()
        nursery.cancel_scope.cancel()
    assert 300 < network.stats["dropped"] < 500
    assert 100 < network.stats["duplicated"] < 220
    got = [m.n for _, m, _ in inbox["c"]]
    assert len(got) == 2000 - network.stats["dropped"] + network.stats["duplicated"]
    assert len(got) - len(set(got)) == network.stats["duplicated"]


async def test_partitions_cut_messages_both_ways_and_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork(random.Random(3), NODES, Faults(delay=(1.0, 1.0)))
    inbox = _wire(network)
    async with trio.open_nursery() as nursery:
        await nursery.start(network.run)
        network.transport("a").send(Msg("a", "b", 0), None)  # in flight when the cut comes
        await trio.sleep(0.5)
        network.partition([{"a"}, {"b", "c"}])
        network.transport("a").send(Msg("a", "b", 1), None)
        network.transport("b").send(Msg("b", "a", 2), None)
        network.transport("b").send(Msg("b", "c", 3), None)
        await _settle()
        network.partition([{"a", "b"}])  # c, in no group, is alone
        network.transport("a").send(Msg("a", "b", 4), None)
        network.transport("c").send(Msg("c", "b", 5), None)
        await _settle()
        network.heal()
        network.transport("c").send(Msg("c", "a", 6), None)
        await _settle()
        nursery.cancel_scope.cancel()
    assert [m.n for _, m, _ in inbox["b"]] == [4]
    assert [m.n for _, m, _ in inbox["c"]] == [3]
    assert [m.n for _, m, _ in inbox["a"]] == [6]


async def test_a_detached_node_loses_what_arrives(autojump_clock: trio.testing.MockClock) -> None:
    network = SimNetwork(random.Random(4), NODES, Faults(delay=(1.0, 1.0)))
    inbox = _wire(network)
    async with trio.open_nursery() as nursery:
        await nursery.start(network.run)
        network.transport("a").send(Msg("a", "b", 0), None)
        network.detach("b")
        await _settle()
        network.attach("b", lambda m, s: inbox["b"].append((0.0, m, s)))
        network.transport("a").send(Msg("a", "b", 1), None)
        await _settle()
        nursery.cancel_scope.cancel()
    assert [m.n for _, m, _ in inbox["b"]] == [1]
    assert network.stats["lost"] == 1


def test_sending_outside_the_group_is_a_bug() -> None:
    network = SimNetwork(random.Random(5), NODES, Faults())
    with pytest.raises(AssertionError, match="outside"):
        network.send("a", Msg("a", "z", 0), None)


def _run_once(seed: int) -> list[tuple[float, str, str, str]]:
    async def main() -> list[tuple[float, str, str, str]]:
        network = SimNetwork(random.Random(seed), NODES, Faults(drop=0.1, duplicate=0.1))
        network.keep_trace = True
        _wire(network)
        async with trio.open_nursery() as nursery:
            await nursery.start(network.run)
            for n in range(100):
                network.transport(NODES[n % 2]).send(Msg(NODES[n % 2], "c", n), None)
                await trio.sleep(0.001)
            await _settle()
            nursery.cancel_scope.cancel()
        return network.trace

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_same_seed_same_deliveries() -> None:
    assert _run_once(7) == _run_once(7)
    assert _run_once(7) != _run_once(8)
