"""`Later`: each planned action runs once, its delay after it was planned, from one task."""

from __future__ import annotations

import trio
import trio.testing

from ringfs.fs.later import Action, Later


class Runs:
    """Actions that note their key and the (mock) time they ran at."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, float]] = []

    def action(self, key: str) -> Action:
        async def run() -> None:
            self.ran.append((key, trio.current_time()))

        return run


async def test_each_action_runs_once_its_delay_after_it_was_first_planned(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runs = Runs()
    action, ran = runs.action, runs.ran
    async with trio.open_nursery() as nursery:
        later = Later(nursery, delay=30.0)
        assert trio.current_time() == 0
        later.plan("a", action("a"), name="a")
        await trio.sleep(10)
        later.plan("b", action("b"), name="b")
        later.plan("a", action("a again"), name="a")  # still waiting: not planned twice
        assert later.waiting("a")
        assert later.waiting("b")
        await trio.sleep(25)
        assert ran == [("a", 30.0)]
        assert not later.waiting("a")
        later.plan("a", action("a later"), name="a")  # ran: planned anew
        await trio.sleep(40)
    assert ran == [("a", 30.0), ("b", 40.0), ("a later", 65.0)]


async def test_one_task_waits_for_every_planned_action_and_none_once_all_ran(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def nothing() -> None:
        pass

    async with trio.open_nursery() as nursery:
        later = Later(nursery, delay=1.0)
        for key in range(100):
            later.plan(key, nothing, name="nothing")
        await trio.testing.wait_all_tasks_blocked()
        assert [task.name for task in nursery.child_tasks] == ["later"]
        await trio.sleep(2)
        assert not nursery.child_tasks


async def test_a_cancelled_action_never_runs_and_holds_up_none_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runs = Runs()
    action, ran = runs.action, runs.ran
    async with trio.open_nursery() as nursery:
        later = Later(nursery, delay=10.0)
        later.plan("a", action("a"), name="a")
        await trio.sleep(1)
        later.plan("b", action("b"), name="b")
        later.cancel("a")
        later.cancel("c")  # nothing planned: nothing to do
        assert not later.waiting("a")
        await trio.sleep(20)
    assert ran == [("b", 11.0)]
