"""Which connections a node keeps before they have authenticated.

A peer that has not proved it holds the secret gets a budget of its own, apart from the
authenticated connections: at most `max_pending` such connections in all, and at most
`per_address` from one address. A new connection is always let in: when a budget is full, the
oldest pending connection of that address (or, for the whole budget, of the address with the
most) is closed to make room. A client's handshake takes a round trip, so a peer that keeps
hundreds of connections open without a word only ever closes its own, and an authenticated
client still gets through (the lockout this prevents: about 300 connections re-opened every
4.5 s filled every slot for good). Pure bookkeeping; the server closes what it is told to.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class Admission:
    """The pending (not yet authenticated) connections, oldest first."""

    def __init__(self, max_pending: int, per_address: int) -> None:
        if not 1 <= per_address <= max_pending:
            raise ValueError("need 1 <= per_address <= max_pending")
        self.max_pending = max_pending
        self.per_address = per_address
        self._pending: OrderedDict[Hashable, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def arrive(self, connection: Hashable, address: str) -> list[Hashable]:
        """Take in a new connection from `address`; the pending connections to close now."""
        self._pending[connection] = address
        evicted = []
        if self._count(address) > self.per_address:
            evicted.append(self._oldest_of(address))
        elif len(self._pending) > self.max_pending:
            evicted.append(self._oldest_of(self._busiest()))
        for old in evicted:
            del self._pending[old]
        return evicted

    def leave(self, connection: Hashable) -> None:
        """The connection authenticated, or closed: it no longer counts."""
        self._pending.pop(connection, None)

    def _count(self, address: str) -> int:
        return sum(1 for there in self._pending.values() if there == address)

    def _oldest_of(self, address: str) -> Hashable:
        return next(c for c, there in self._pending.items() if there == address)

    def _busiest(self) -> str:
        """The address with the most pending connections (of those, the one whose oldest
        connection came first)."""
        counts: dict[str, int] = {}
        for address in self._pending.values():
            counts[address] = counts.get(address, 0) + 1
        return max(counts, key=lambda address: counts[address])
