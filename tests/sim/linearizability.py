"""A linearizability checker for a history of key-value register/counter operations.

The search is Wing & Gong's, with Lowe's memoization: the history becomes a list of call and
return events in real-time order. The search repeatedly picks a call that may be linearized
next (one whose invocation precedes the earliest pending return), applies it to the model and
removes its events; on reaching a return whose call was not linearized it backtracks. A set of
(linearized ops, model state) pairs already explored cuts the search, because the rest of the
search depends on nothing else.

Each key is checked on its own: linearizability is compositional (Herlihy & Wing's locality;
Horn & Kroening's P-compositionality for this kind of model), and a model whose state is one
value keeps the memo small.

Model, per key, starting from ``None`` (absent):

- ``read(k) -> v``: v is the current value.
- ``write(k, v) -> "ok"``: the value becomes v.
- ``cas(k, old, new) -> bool``: if the value equals old it becomes new and the result is True,
  otherwise the result is False and nothing changes.
- ``incr(k) -> n``: the value (absent counts as 0) plus one becomes the value, and is the result.

An operation whose outcome is unknown (timed out, leadership lost) has ``complete=None``: it may
take effect at any point after its invocation, or never, and its result constrains nothing.
Operations known to have failed without effect must be left out of the history.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

__all__ = ["Op", "Verdict", "check", "check_key", "describe", "step"]

READ = "read"
WRITE = "write"
CAS = "cas"
INCR = "incr"
KINDS = (READ, WRITE, CAS, INCR)

# A result that matches anything: for operations whose outcome is unknown.
_ANY = object()


@dataclasses.dataclass(frozen=True)
class Op:
    """One client operation as the client saw it.

    ``invoke`` and ``complete`` only need to be comparable: the real-time order of the events
    (the harness uses a global event counter, which orders events that share a clock reading).
    Events with equal stamps count as concurrent. ``complete is None`` means the outcome is
    unknown; ``result`` is then ignored.
    """

    op_id: int
    client: int
    kind: str
    key: Hashable
    args: tuple[Any, ...]
    result: Any
    invoke: float
    complete: float | None
    # Clock readings, only for messages.
    invoke_time: float | None = None
    complete_time: float | None = None

    def __post_init__(self) -> None:
        arity = {READ: 0, WRITE: 1, CAS: 2, INCR: 0}
        if self.kind not in arity:
            raise ValueError(f"unknown operation kind {self.kind!r}")
        if len(self.args) != arity[self.kind]:
            raise ValueError(f"{self.kind} takes {arity[self.kind]} arguments, got {self.args!r}")
        if self.complete is not None and self.complete < self.invoke:
            raise ValueError(f"op {self.op_id} completes before it is invoked")

    @property
    def unknown(self) -> bool:
        return self.complete is None

    def __str__(self) -> str:
        args = ", ".join(repr(a) for a in (self.key, *self.args))
        result = "?" if self.unknown else repr(self.result)
        when = f"[{_stamp(self.invoke, self.invoke_time)}, "
        when += "never]" if self.unknown else f"{_stamp(self.complete, self.complete_time)}]"
        return f"#{self.op_id} c{self.client} {self.kind}({args}) -> {result} {when}"


def _stamp(order: float | None, time: float | None) -> str:
    return f"t={time:.3f}" if time is not None else f"{order}"


def step(state: Any, kind: str, args: tuple[Any, ...], result: Any) -> tuple[bool, Any]:
    """Apply one operation to a key's value: (whether ``result`` is possible, the new value).

    ``result`` may be the private ``_ANY`` marker, which every outcome matches.
    """
    if kind == READ:
        return (result is _ANY or result == state), state
    if kind == WRITE:
        return True, args[0]
    if kind == CAS:
        old, new = args
        swapped = state == old
        if result is not _ANY and result != swapped:
            return False, state
        return True, (new if swapped else state)
    if kind == INCR:
        value = (0 if state is None else state) + 1
        return (result is _ANY or result == value), value
    raise ValueError(f"unknown operation kind {kind!r}")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of a check. On failure: the key, a small failing sub-history and a note."""

    ok: bool
    key: Hashable = None
    ops: tuple[Op, ...] = ()
    explanation: str = ""

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if self.ok:
            return "linearizable"
        return describe(self)


def describe(verdict: Verdict) -> str:
    """A human-readable account of a failed verdict."""
    lines = [f"not linearizable on key {verdict.key!r}: {verdict.explanation}"]
    lines += [f"  {op}" for op in verdict.ops]
    return "\n".join(lines)


class _Entry:
    """A node of the doubly linked event list: a call (``match`` is its return) or a return."""

    __slots__ = ("match", "next", "op", "prev")

    def __init__(self, op: Op | None) -> None:
        self.op = op
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _linearize(ops: Sequence[Op], initial: Any) -> tuple[bool, list[Op], Op | None]:
    """Wing & Gong's search with Lowe's memo over ``ops`` (all on one key).

    Returns (linearizable, the longest linearized prefix seen, the completed op that could not
    be placed after it). Unknown-outcome operations get a return event after all others, so a
    history passes once every completed operation is placed.
    """
    index = {id(op): i for i, op in enumerate(ops)}
    events: list[tuple[tuple[int, float], int, _Entry]] = []
    for op in ops:
        call, ret = _Entry(op), _Entry(None)
        call.match = ret
        ret.op = op
        # At equal stamps calls sort first: events that share a stamp are concurrent.
        events.append(((0, op.invoke), 0, call))
        end = (1, 0.0) if op.complete is None else (0, op.complete)
        events.append((end, 1, ret))
    events.sort(key=lambda e: (e[0], e[1]))
    head = _Entry(None)
    prev = head
    for _, _, entry in events:
        prev.next = entry
        entry.prev = prev
        prev = entry

    def lift(call: _Entry) -> None:
        for entry in (call, call.match):
            assert entry is not None
            assert entry.prev is not None
            entry.prev.next = entry.next
            if entry.next is not None:
                entry.next.prev = entry.prev

    def unlift(call: _Entry) -> None:
        for entry in (call.match, call):
            assert entry is not None
            assert entry.prev is not None
            entry.prev.next = entry
            if entry.next is not None:
                entry.next.prev = entry

    remaining = sum(1 for op in ops if not op.unknown)
    state = initial
    linearized = 0
    memo: set[tuple[int, Any]] = set()
    stack: list[tuple[_Entry, Any]] = []
    best: list[Op] = []
    blocker: Op | None = None
    entry = head.next
    while remaining:
        assert entry is not None
        op = entry.op
        assert op is not None
        if entry.match is not None:  # a call
            result = _ANY if op.unknown else op.result
            possible, new_state = step(state, op.kind, op.args, result)
            if possible:
                bit = 1 << index[id(op)]
                key = (linearized | bit, new_state)
                if key not in memo:
                    memo.add(key)
                    stack.append((entry, state))
                    state, linearized = new_state, linearized | bit
                    if not op.unknown:
                        remaining -= 1
                    lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:  # the return of an op not yet placed: undo the last choice
            if len(stack) >= len(best):
                best = [e.op for e, _ in stack if e.op is not None]
                blocker = op
            if not stack:
                return False, best, blocker
            entry, state = stack.pop()
            placed = entry.op
            assert placed is not None
            linearized &= ~(1 << index[id(placed)])
            if not placed.unknown:
                remaining += 1
            unlift(entry)
            entry = entry.next
    return True, [], None


def _prune(ops: Sequence[Op]) -> list[Op]:
    """Drop operations that cannot matter: reads whose outcome is unknown."""
    return [op for op in ops if not (op.unknown and op.kind == READ)]


def check_key(key: Hashable, ops: Sequence[Op], initial: Any = None) -> Verdict:
    """Check the operations on one key. On failure, shrink to a small failing sub-history."""
    ops = _prune(ops)
    ok, _, _ = _linearize(ops, initial)
    if ok:
        return Verdict(ok=True)
    core = _shrink(ops, initial)
    _, best, blocker = _linearize(core, initial)
    if blocker is None:
        note = "no linearization"
    else:
        placed = ", ".join(f"#{op.op_id}" for op in best) or "nothing"
        note = (
            f"the longest linearizable prefix is ({placed}); "
            f"#{blocker.op_id} must take effect by then but fits nowhere"
        )
    return Verdict(ok=False, key=key, ops=tuple(sorted(core, key=_order)), explanation=note)


def _order(op: Op) -> tuple[float, int]:
    return (op.invoke, op.op_id)


def _truncate(ops: Sequence[Op], cut: float) -> list[Op]:
    """The history as seen at real time ``cut``: later calls vanish, later returns are unknown."""
    kept = []
    for op in ops:
        if op.invoke > cut:
            continue
        if op.complete is not None and op.complete > cut:
            op = dataclasses.replace(op, complete=None, complete_time=None)
        kept.append(op)
    return _prune(kept)


def _shrink(ops: Sequence[Op], initial: Any) -> list[Op]:
    """A small sub-history that still fails, found only by steps that keep a valid witness.

    Two steps cannot turn a linearizable history into a failing one, so the failure they keep
    is the original's: cutting the history at an earlier moment (ops still running become
    unknown), and removing operations that only observe (reads, a cas that returned False).
    """
    stamps = sorted({op.invoke for op in ops} | {op.complete for op in ops if op.complete})
    lo, hi = 0, len(stamps) - 1
    while lo < hi:  # the earliest cut at which the history already fails
        mid = (lo + hi) // 2
        if _linearize(_truncate(ops, stamps[mid]), initial)[0]:
            lo = mid + 1
        else:
            hi = mid
    core = _truncate(ops, stamps[hi])
    for op in sorted(core, key=_order, reverse=True):
        observer = op.kind == READ or (op.kind == CAS and op.result is False)
        if not observer or op.unknown:
            continue
        trial = [o for o in core if o is not op]
        if not _linearize(trial, initial)[0]:
            core = trial
    return core


def check(ops: Iterable[Op], initial: Any = None) -> Verdict:
    """Check a whole history key by key; the first failing key (in key order) is reported."""
    by_key: dict[Hashable, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    for key in sorted(by_key, key=repr):
        verdict = check_key(key, by_key[key], initial)
        if not verdict.ok:
            return verdict
    return Verdict(ok=True)
