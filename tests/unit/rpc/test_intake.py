"""The node-wide byte budget: first come, first served; nothing lost to cancellation."""

from __future__ import annotations

import trio
import trio.testing

from ringfs.node.rpc.intake import CHARGED_FROM, ByteBudget, Intake


async def test_waiters_are_served_in_arrival_order() -> None:
    budget = ByteBudget(100)
    assert await budget.acquire(80) == 80
    order: list[str] = []

    async def take(name: str, size: int) -> None:
        await budget.acquire(size)
        order.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "large", 60)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, "small", 10)  # would fit now, but comes second
        await trio.testing.wait_all_tasks_blocked()
        assert order == []
        assert budget.waiting == 2
        budget.release(40)  # room for the first in line only
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["large"]
        budget.release(40)
    assert order == ["large", "small"]
    assert budget.free == 30


async def test_a_cancelled_waiter_gives_its_place_and_bytes_back() -> None:
    budget = ByteBudget(100)
    await budget.acquire(100)
    with trio.move_on_after(0.01):
        await budget.acquire(50)
    assert budget.waiting == 0
    budget.release(100)
    assert budget.free == 100


async def test_a_waiter_behind_a_cancelled_one_gets_its_turn() -> None:
    budget = ByteBudget(100)
    await budget.acquire(60)
    got: list[int] = []
    large = trio.CancelScope()

    async def take_large() -> None:
        with large:
            await budget.acquire(90)

    async def take(size: int) -> None:
        got.append(await budget.acquire(size))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take_large)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, 30)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # behind the large one
        large.cancel()
    assert got == [30]
    assert budget.free == 10


async def test_more_than_the_whole_budget_takes_the_whole_budget() -> None:
    budget = ByteBudget(100)
    assert await budget.acquire(500) == 100
    assert await budget.acquire(0) == 0  # nothing to wait for


def test_only_large_requests_are_charged() -> None:
    intake = Intake(max_bytes=1 << 20, big_frames=2)
    assert intake.charge(CHARGED_FROM - 1) == 0
    assert intake.charge(CHARGED_FROM) == CHARGED_FROM
    assert intake.stats() == {"held": 0, "waiting": 0, "big_frames": 0}
