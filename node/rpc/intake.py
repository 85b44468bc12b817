"""How much of what its peers send a node holds at once, over all its connections.

Without a bound, each connection could hold a whole unfinished message (16 MiB) and 64
requests in flight: 30 connections sending blocks took a node from 35 MB to 537 MB, and the
limits allowed about 4 GiB. Now:

- A request of `CHARGED_FROM` bytes or more is charged to a node-wide budget (`max_bytes`)
  from when it is complete until it is answered. A connection whose request does not fit waits,
  and reads nothing meanwhile: TCP pushes back on its peer (back-pressure, not a crash). Smaller
  requests (metadata calls, polls) are not charged: 64 of them in flight on a connection hold
  at most 256 KiB. No handler waits for a charged request of its own node (a metadata command
  waits for Raft notifications and polls, a block write for the disk), so what holds the budget
  is always answered, and the budget comes back.
- A connection may buffer `UNCHARGED_PARTIAL` bytes of an unfinished message; to read more
  of it, it takes one of `big_frames` tokens, kept until that message is complete and charged.
  A token holder only waits for its peer's bytes and for budget that answers free, so tokens
  come back too.

So the messages a node holds are bounded by about `max_bytes + big_frames * 2 * max_frame +
connections * 768 KiB`: 256 + 128 + 192 MiB with the defaults, for 256 connections.
"""

from __future__ import annotations

from collections import deque

import trio

#: Requests this big or bigger are charged to the budget.
CHARGED_FROM = 4096
#: Bytes of an unfinished message a connection holds without a token.
UNCHARGED_PARTIAL = 256 * 1024


class ByteBudget:
    """A node-wide count of bytes, taken and given back; waiters are served in arrival order,
    so a large request is not passed over for ever by smaller ones."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.free = capacity
        self._waiters: deque[tuple[int, trio.Event]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, size: int) -> int:
        """Take `size` bytes (at most the whole budget), waiting until they are free; returns
        what was taken, for `release`."""
        size = min(size, self.capacity)
        if size == 0:
            return 0
        if not self._waiters and size <= self.free:
            self.free -= size
            return size
        waiter = (size, trio.Event())
        self._waiters.append(waiter)
        try:
            await waiter[1].wait()
        except BaseException:
            if waiter[1].is_set():
                self.release(size)  # granted as it was cancelled
            else:
                self._waiters.remove(waiter)
                self._grant()  # those behind it may fit now
            raise
        return size

    def release(self, size: int) -> None:
        self.free += size
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.free:
            size, event = self._waiters.popleft()
            self.free -= size
            event.set()


class Intake:
    """The budget and the tokens one node's connections share (see the module)."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024, big_frames: int = 4) -> None:
        self.budget = ByteBudget(max_bytes)
        self.big_frames = trio.Semaphore(big_frames)
        self._big_frames = big_frames

    def charge(self, size: int) -> int:
        """What a request of `size` bytes is charged (0: not at all)."""
        return size if size >= CHARGED_FROM else 0

    def stats(self) -> dict[str, int]:
        """Bytes held by requests, requests waiting for room, tokens in use: for node.stats."""
        return {
            "held": self.budget.capacity - self.budget.free,
            "waiting": self.budget.waiting,
            "big_frames": self._big_frames - self.big_frames.value,
        }
