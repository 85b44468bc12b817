"""Directories held by one mount, and how the leader takes them back.

A mount that made a directory holds it (`Delegate`, in the state machine's `delegations`
table): only that mount changes the names in it, so it can acknowledge creates, unlinks and
renames there before the leader applies them, and send them in batches
(`ringfs.fs.writebehind`). When another client's command would change names in a held
directory, the state machine refuses it with DELEGATED, unremembered; the leader then recalls
the directory from its holder through the change feed, waits until the holder has sent what
it acknowledged and released it, and proposes the command again.

A holder that stops polling the feed for `HOLD_EXPIRY` seconds loses its directories: the
leader releases them itself. A mount stops acknowledging changes once its feed's lease
(`ringfs.fs.metacache.LEASE`, shorter) runs out, so by then it acknowledges nothing more there;
what it acknowledged and could not send in all that time is refused (ESTALE) and lost, as a
crashed mount's unsynced names are.

`Recalls` is the leader's bookkeeping of this, without I/O: when each client last polled, and
which directories each holder is asked to give back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

#: Seconds a holder may go without polling the feed before the leader releases what it holds:
#: well past a mount's cache lease (1 s), after which it acknowledges nothing there.
HOLD_EXPIRY = 3.0


class Recalls:
    """When each client last polled the feed, and the directories asked back from each."""

    def __init__(self, clock: Callable[[], float], expiry: float = HOLD_EXPIRY) -> None:
        self._clock = clock
        self._expiry = expiry
        self._seen: dict[bytes, float] = {}
        self._wanted: dict[bytes, set[int]] = {}

    def seen(self, client: bytes) -> None:
        """`client` polled the feed: it is alive, and hears its recalls."""
        self._seen[client] = self._clock()

    def want(self, holder: bytes, dirs: Iterable[int]) -> bool:
        """Ask `holder` for `dirs`; whether that is news to it (its poll must wake)."""
        wanted = self._wanted.setdefault(holder, set())
        news = not wanted.issuperset(dirs)
        wanted.update(dirs)
        return news

    def wanted(self, client: bytes) -> set[int]:
        return set(self._wanted.get(client, ()))

    def still_held(self, client: bytes, dirs: Iterable[int]) -> None:
        """Of what `client` was asked for, only `dirs` are still held by it."""
        kept = self._wanted.get(client, set()) & set(dirs)
        if kept:
            self._wanted[client] = kept
        else:
            self._wanted.pop(client, None)

    def expired(self, holder: bytes, waiting_since: float) -> bool:
        """Whether `holder` has not polled for `HOLD_EXPIRY` seconds, counting from
        `waiting_since` at the earliest (a leader that just took over has not heard from
        anyone yet)."""
        return self.silent(holder, waiting_since) > self._expiry

    def silent(self, client: bytes, since: float) -> float:
        """Seconds since `client` last polled the feed, counting from `since` at the
        earliest (when this leader started listening)."""
        return self._clock() - max(self._seen.get(client, since), since)

    def forget(self, holder: bytes) -> None:
        """`holder` lost everything it held."""
        self._wanted.pop(holder, None)
