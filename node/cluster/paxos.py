"""A replicated register agreed with CASPaxos: the decisions, with no I/O.

The cluster map lives in a register that every member node accepts for. Any node can change it
by proposing a function of its current value (Rystsov, "CASPaxos: Replicated State Machines
without logs", 2018): single-decree Paxos run again for each change, with the value itself in
place of a log.

1. The proposer picks a ballot higher than any it used (`Ballots`) and sends `Prepare` to every
   acceptor.
2. An acceptor promises (`Promise`) to refuse lower ballots from then on, unless it already
   promised a higher one (`Reject`), and tells which value it accepted last, and at which ballot.
3. With promises from a majority, the proposer takes the value of the highest ballot among them
   (the current value), applies its change to it, and sends the new value in `Accept`.
4. An acceptor accepts (`Accepted`) unless it promised a higher ballot meanwhile.
5. Accepted by a majority, the new value is the register's: the change is done.

Any two majorities share an acceptor, so a proposer always starts from the last value a
majority accepted: changes apply one after another, and a reader (a change that keeps the
value) sees every change that finished before it began. A proposal that meets a higher ballot
fails (`Conflict`), or times out, and the caller tries again with a higher ballot.

A retry must not apply the change twice: a value a failed attempt sent to be accepted may
still be taken up by another proposer, which then applies its own change on top of it. So the
register holds a `Register`: the value, a serial number that counts the changes, and the ids
and results of the last `RECENT` changes. A change already among them is not applied again:
its retry reports the result it had. One that is not was not applied, unless the record has
lost sight of it: when an earlier attempt sent a value and more than `RECENT` changes came
since, the retry cannot tell, and raises `InDoubt`.

An acceptor must keep its promise and what it accepted across a crash: the shell saves
`AcceptorState` durably before it sends the reply that `Acceptor` returns. A proposer must
never use a ballot twice with different values, so `Ballots` is saved before its ballot is
used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Accept",
    "Accepted",
    "Acceptor",
    "AcceptorState",
    "Ballot",
    "Ballots",
    "Conflict",
    "InDoubt",
    "Register",
    "Prepare",
    "Promise",
    "Proposal",
    "Reject",
]


@dataclass(frozen=True, order=True, slots=True)
class Ballot:
    """Orders proposals: by counter, then by proposer, so no two proposers share one."""

    counter: int
    proposer: str

    @classmethod
    def zero(cls) -> Ballot:
        """Below every ballot a proposer uses: nothing promised, nothing accepted."""
        return cls(0, "")


@dataclass(frozen=True, slots=True)
class Prepare:
    src: str
    dst: str
    ballot: Ballot


@dataclass(frozen=True, slots=True)
class Promise:
    """The acceptor refuses ballots below `ballot` from now on; it last accepted `value` at
    `accepted` (the zero ballot and an empty Register: nothing yet)."""

    src: str
    dst: str
    ballot: Ballot
    accepted: Ballot
    value: Register


@dataclass(frozen=True, slots=True)
class Accept:
    src: str
    dst: str
    ballot: Ballot
    value: Register


@dataclass(frozen=True, slots=True)
class Accepted:
    src: str
    dst: str
    ballot: Ballot


@dataclass(frozen=True, slots=True)
class Reject:
    """The acceptor promised `promised`, higher than the `ballot` it was asked for."""

    src: str
    dst: str
    ballot: Ballot
    promised: Ballot


Message = Prepare | Promise | Accept | Accepted | Reject


#: Changes a `Register` remembers, so that their retries are recognised.
RECENT = 64


@dataclass(frozen=True, slots=True)
class Register:
    """The register's value, with what makes retries safe: `serial` counts the changes, and
    `recent` holds (change id, result) of the last ones, the last applied at `serial`."""

    serial: int = 0
    value: Any = None
    recent: tuple[tuple[str, Any], ...] = ()

    def result_of(self, change_id: str) -> tuple[bool, Any]:
        """(True, its result) if the change `change_id` is among the recent ones."""
        for known, result in self.recent:
            if known == change_id:
                return True, result
        return False, None

    def remembers_since(self, serial: int) -> bool:
        """Whether every change applied at `serial` or later is among the recent ones."""
        return self.serial - len(self.recent) < serial

    def then(self, change_id: str, value: Any, result: Any) -> Register:
        recent = (*self.recent, (change_id, result))[-RECENT:]
        return Register(self.serial + 1, value, recent)


@dataclass(frozen=True, slots=True)
class AcceptorState:
    """What an acceptor must never forget."""

    promised: Ballot = Ballot.zero()
    accepted: Ballot = Ballot.zero()
    value: Register = Register()


class Acceptor:
    """One acceptor: answers prepares and accepts; `state` is what the shell must save
    before the answer goes out."""

    def __init__(self, node_id: str, state: AcceptorState) -> None:
        self.node_id = node_id
        self.state = state

    def handle(self, message: Prepare | Accept) -> Promise | Accepted | Reject:
        """The answer to a proposer's message; `state` changes first when it must."""
        state = self.state
        if isinstance(message, Prepare):
            if message.ballot <= state.promised:
                return self._reject(message)
            self.state = dataclasses.replace(state, promised=message.ballot)
            return Promise(self.node_id, message.src, message.ballot, state.accepted, state.value)
        if message.ballot < state.promised:
            return self._reject(message)
        self.state = AcceptorState(message.ballot, message.ballot, message.value)
        return Accepted(self.node_id, message.src, message.ballot)

    def _reject(self, message: Prepare | Accept) -> Reject:
        return Reject(self.node_id, message.src, message.ballot, self.state.promised)


#: Ballots a proposer may use per save of its counter: saving is an fsync, and a node reads
#: the register every few seconds.
BALLOTS_PER_SAVE = 100


class Ballots:
    """A proposer's ballot counter. `next` gives a ballot above every one used and seen;
    `saved_up_to` is how far the shell must have saved the counter before using it. It runs
    `BALLOTS_PER_SAVE` ahead, so that a save is needed once per that many ballots; after a
    restart, the counter starts from what was saved, above every ballot used."""

    def __init__(self, proposer: str, saved: int = 0) -> None:
        self.proposer = proposer
        self.saved_up_to = saved
        self._last = saved

    def next(self, above: Ballot | None = None) -> Ballot:
        self._last = max(self._last, 0 if above is None else above.counter) + 1
        if self._last > self.saved_up_to:
            self.saved_up_to = self._last + BALLOTS_PER_SAVE
        return Ballot(self._last, self.proposer)


class Conflict(Exception):
    """A higher ballot got there first; try again above `seen`."""

    def __init__(self, seen: Ballot) -> None:
        super().__init__(f"ballot {seen.counter}/{seen.proposer} is ahead")
        self.seen = seen


class Reconfigured(Exception):
    """The register's value names other acceptors than this attempt asked: try again with
    those of `value`."""

    def __init__(self, value: Any) -> None:
        super().__init__("the register's acceptors changed")
        self.value = value


class InDoubt(Exception):
    """An earlier attempt of this change may have been applied, and the register no longer
    remembers: whether the change happened cannot be known."""


#: A change: the new value from the current one, and what to tell the caller.
Change = Callable[[Any], tuple[Any, Any]]
#: The acceptors a value names (None: the value does not say, the proposer's stand).
AcceptorsOf = Callable[[Any], "frozenset[str] | None"]


def _unnamed(value: Any) -> frozenset[str] | None:
    return None


class Proposal:
    """One attempt to apply a change to the register, at one ballot.

    `start` gives the prepares; `receive` takes each answer and gives what to send next.
    `done` is set once a majority accepted (then `result` is the change's answer and `value`
    the register's new `Register`); a `Reject` raises Conflict. `change_id` names the change
    in every attempt of it ("" for a read: the value is accepted again as it is, which makes
    it the register's for sure, and nothing is recorded); `sent_since` is the lowest serial an
    earlier attempt of it could have been applied at (see `sent`), None if none sent a value.

    The acceptors may change with the value (`acceptors_of`), one added or removed per change,
    so that any majority of the set before meets any majority of the set after. A proposer
    whose set is older than the value it finds raises Reconfigured instead of writing: going on
    with a set two changes behind could lose a change. It starts again asking a majority of
    that set and of the value's (`joined`), and so on until the value it finds names one of the
    sets it asked; it then writes to a majority of each. Asking only the value's set instead
    could go back and forth forever between two sets, each holding a newer value that names
    the other, of which neither was chosen.
    """

    def __init__(
        self,
        proposer: str,
        acceptors: tuple[str, ...],
        ballot: Ballot,
        change: Change,
        change_id: str,
        sent_since: int | None = None,
        acceptors_of: AcceptorsOf = _unnamed,
        joined: tuple[frozenset[str], ...] = (),
    ) -> None:
        self.proposer = proposer
        self.sets = (frozenset(acceptors), *joined)
        self.acceptors = (*acceptors, *sorted(frozenset().union(*joined) - set(acceptors)))
        self.ballot = ballot
        self.change = change
        self.change_id = change_id
        self.sent_since = sent_since
        self.acceptors_of = acceptors_of
        self._promises: dict[str, Promise] = {}
        self._accepted: set[str] = set()
        self.accepting = False
        self.done = False
        self.value = Register()
        self.result: Any = None

    @property
    def sent(self) -> int | None:
        """What the next attempt's `sent_since` is: the serial this one proposed, if it sent
        a value (or an earlier one's)."""
        if self.sent_since is not None or not self.accepting:
            return self.sent_since
        return self.value.serial

    def start(self) -> list[Message]:
        return [Prepare(self.proposer, dst, self.ballot) for dst in self.acceptors]

    def receive(self, message: Message) -> list[Message]:
        """What to send on this answer; raises Conflict on a rejection of this ballot,
        Reconfigured when the value names other acceptors, and InDoubt when the change may have
        been applied and the register no longer tells."""
        if self.done or message.ballot != self.ballot or message.src not in self.acceptors:
            return []  # late, duplicated, or for another attempt
        if isinstance(message, Reject):
            raise Conflict(message.promised)
        if isinstance(message, Promise) and not self.accepting:
            self._promises[message.src] = message
            if not self._quorum(self._promises.keys()):
                return []
            return self._accept()
        if isinstance(message, Accepted) and self.accepting:
            self._accepted.add(message.src)
            self.done = self._quorum(self._accepted)
        return []

    def _quorum(self, answered: Iterable[str]) -> bool:
        """Whether `answered` holds a majority of each set of acceptors asked."""
        got = set(answered)
        return all(len(members & got) > len(members) // 2 for members in self.sets)

    def _accept(self) -> list[Message]:
        """The current value is the one accepted at the highest ballot among the promises:
        apply the change to it, unless it was applied already."""
        current: Register = max(self._promises.values(), key=lambda p: p.accepted).value
        named = self.acceptors_of(current.value)
        if named is not None and named not in self.sets:
            raise Reconfigured(current.value)
        applied, result = current.result_of(self.change_id) if self.change_id else (False, None)
        if not self.change_id:  # a read: the value stays, and nothing is recorded
            self.value, self.result = current, self.change(current.value)[1]
        elif applied:
            self.value, self.result = current, result
        elif self.sent_since is None or current.remembers_since(self.sent_since):
            value, self.result = self.change(current.value)
            self.value = current.then(self.change_id, value, self.result)
        else:
            raise InDoubt(f"change {self.change_id}: more than {RECENT} changes since it was sent")
        self.accepting = True
        return [Accept(self.proposer, dst, self.ballot, self.value) for dst in self.acceptors]
