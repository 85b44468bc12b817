"""Actions run once, a fixed delay after they were planned, all from one task.

A mount plans a commit for every file whose upload finished (`FileState._plan_commit`), and
almost every one is committed by a `close` long before its delay is out. A sleeping task per
file would cost each small file a task spawned, a timer, and a wake-up 30 s later; one task
that sleeps until the earliest deadline costs it an entry in a dict, which its close removes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable

import trio

Action = Callable[[], Awaitable[None]]


class Later:
    """Runs each action `delay` seconds after it was planned, once, in its own task in
    `nursery`, unless it is cancelled first. An action planned again for a key that is still
    waiting is not planned twice."""

    def __init__(self, nursery: trio.Nursery, delay: float) -> None:
        self.delay = delay
        self._nursery = nursery
        # By key, in the order they were planned: with one delay for all, that is the order
        # their deadlines come in.
        self._waiting: dict[Hashable, tuple[float, Action, str]] = {}
        self._running = False

    def plan(self, key: Hashable, action: Action, name: str) -> None:
        """Run `action` (a task called `name`) once `delay` has passed."""
        if key in self._waiting:
            return
        self._waiting[key] = (trio.current_time() + self.delay, action, name)
        if not self._running:
            self._running = True
            self._nursery.start_soon(self._run, name="later")

    def cancel(self, key: Hashable) -> None:
        """Forget the action planned for `key`, if it has not started."""
        self._waiting.pop(key, None)

    def waiting(self, key: Hashable) -> bool:
        """Whether an action is planned for `key` and not started yet."""
        return key in self._waiting

    async def _run(self) -> None:
        """Start the actions as their deadlines come; end when none waits."""
        try:
            while self._waiting:
                await trio.sleep_until(next(iter(self._waiting.values()))[0])
                self._start_due(trio.current_time())
        finally:
            self._running = False

    def _start_due(self, now: float) -> None:
        """Start every action due by `now` (those cancelled meanwhile are gone)."""
        while self._waiting:
            key, (deadline, action, name) = next(iter(self._waiting.items()))
            if deadline > now:
                return
            del self._waiting[key]
            self._nursery.start_soon(action, name=name)
