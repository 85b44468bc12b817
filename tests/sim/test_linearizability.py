"""The linearizability checker on hand-made histories, and against brute force."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sim.linearizability import Op, check, check_key, step

_ids = itertools.count()


def op(
    kind: str,
    key: str,
    *args: Any,
    result: Any = None,
    at: tuple[float, float | None],
    client: int = 0,
) -> Op:
    """An op on ``key`` invoked at ``at[0]`` and completed at ``at[1]`` (None: unknown)."""
    return Op(next(_ids), client, kind, key, tuple(args), result, at[0], at[1])


def w(key: str, value: Any, at: tuple[float, float | None], client: int = 0) -> Op:
    return op("write", key, value, result="ok", at=at, client=client)


def r(key: str, value: Any, at: tuple[float, float | None], client: int = 0) -> Op:
    return op("read", key, result=value, at=at, client=client)


def incr(key: str, value: Any, at: tuple[float, float | None], client: int = 0) -> Op:
    return op("incr", key, result=value, at=at, client=client)


def cas(key: str, old: Any, new: Any, ok: Any, at: tuple[float, float | None]) -> Op:
    return op("cas", key, old, new, result=ok, at=at)


def test_empty_and_sequential_histories_pass() -> None:
    assert check([])
    assert check([w("x", 1, (0, 1)), r("x", 1, (2, 3)), incr("x", 2, (4, 5)), r("x", 2, (6, 7))])
    assert check([r("x", None, (0, 1)), incr("x", 1, (2, 3)), cas("x", 1, 5, True, (4, 5))])
    assert check([cas("x", 0, 5, False, (0, 1)), r("x", None, (2, 3))])


def test_stale_read_fails_and_names_the_ops() -> None:
    write, stale = w("x", 1, (0, 1)), r("x", None, (2, 3))
    verdict = check([w("y", 7, (0, 1)), write, stale, r("y", 7, (4, 5))])
    assert not verdict
    assert verdict.key == "x"
    assert set(verdict.ops) == {write, stale}
    assert f"#{stale.op_id}" in str(verdict)


def test_lost_write_fails() -> None:
    lost = w("x", 2, (2, 3))
    verdict = check([w("x", 1, (0, 1)), lost, r("x", 1, (4, 5))])
    assert not verdict
    assert lost in verdict.ops


def test_double_incr_fails_sequential_and_concurrent() -> None:
    assert not check([incr("x", 1, (0, 1)), incr("x", 1, (2, 3))])
    assert not check([incr("x", 1, (0, 5), client=1), incr("x", 1, (1, 4), client=2)])
    assert check([incr("x", 2, (0, 5), client=1), incr("x", 1, (1, 4), client=2)])


def test_incr_that_skips_a_value_fails() -> None:
    assert not check([incr("x", 1, (0, 1)), incr("x", 3, (2, 3))])


def test_concurrent_ops_linearizable_in_one_order_only() -> None:
    # Both swaps overlap; only (None->1, then 1->2) explains them and the final read.
    first, second = cas("x", None, 1, True, (0, 10)), cas("x", 1, 2, True, (1, 9))
    assert check([second, first, r("x", 2, (11, 12))])
    # The same two, but the second finished before the first began: no order works.
    early = cas("x", 1, 2, True, (0, 1))
    late = cas("x", None, 1, True, (2, 3))
    assert not check([early, late])
    # Two overlapping writes: the read after both decides the order, and both orders exist.
    writes = [w("x", 1, (0, 10), client=1), w("x", 2, (1, 10), client=2)]
    assert check([*writes, r("x", 1, (11, 12))])
    assert check([*writes, r("x", 2, (11, 12))])
    # ...but two reads after both cannot disagree.
    assert not check([*writes, r("x", 1, (11, 12)), r("x", 2, (13, 14))])


def test_read_concurrent_with_write_may_see_either_value() -> None:
    write = w("x", 1, (1, 5))
    assert check([write, r("x", None, (2, 3))])
    assert check([write, r("x", 1, (2, 3))])
    # A read that saw the new value forbids a later read of the old one.
    assert not check([write, r("x", 1, (2, 3)), r("x", None, (3.5, 4))])


def test_unknown_op_that_must_be_assumed_applied() -> None:
    timed_out = w("x", 1, (0, None))
    assert check([timed_out, r("x", 1, (5, 6))])
    assert check([timed_out, r("x", None, (1, 2)), r("x", 1, (5, 6))])
    lost_incr = incr("x", None, (0, None))
    assert check([lost_incr, incr("x", 2, (5, 6))])
    assert not check([lost_incr, incr("x", 3, (5, 6))])


def test_unknown_op_may_never_apply() -> None:
    assert check([w("x", 1, (0, None)), r("x", None, (5, 6)), r("x", None, (7, 8))])
    assert check([incr("x", None, (0, None)), incr("x", 1, (5, 6))])


def test_unknown_op_applies_once_and_not_before_its_invocation() -> None:
    timed_out = w("x", 1, (0, None))
    # Once seen, it cannot be undone.
    assert not check([timed_out, r("x", 1, (1, 2)), r("x", None, (5, 6))])
    # A value seen before the write was even invoked cannot come from it.
    assert not check([r("x", 1, (0, 1)), w("x", 1, (2, None))])
    # An unknown incr adds one at most.
    assert not check([incr("x", None, (0, None)), incr("x", 3, (5, 6)), r("x", 3, (7, 8))])


def test_unknown_result_is_ignored() -> None:
    # The recorded result of an unknown op carries no information.
    assert check([op("incr", "x", result=99, at=(0, None)), r("x", None, (1, 2))])


def test_keys_are_checked_independently() -> None:
    history = [w("a", 1, (0, 1)), w("b", 2, (0, 1)), r("b", 2, (2, 3)), r("a", 2, (2, 3))]
    verdict = check(history)
    assert not verdict
    assert verdict.key == "a"
    assert {o.key for o in verdict.ops} == {"a"}


def test_explanation_is_small_in_a_long_history() -> None:
    history = []
    t = 0.0
    for i in range(60):
        history.append(w("x", i, (t, t + 1)))
        history.append(r("x", i, (t + 2, t + 3)))
        t += 4
    stale = r("x", 58, (t, t + 1))
    history += [stale, r("x", 59, (t + 2, t + 3))]
    verdict = check(history)
    assert not verdict
    assert stale in verdict.ops
    # Later ops are cut off and every read but the stale one removed.
    assert [o for o in verdict.ops if o.kind == "read"] == [stale]
    assert verdict.ops[-2].args == (59,)


def test_bad_ops_are_refused() -> None:
    with pytest.raises(ValueError, match="takes 1"):
        Op(0, 0, "write", "x", (), "ok", 0, 1)
    with pytest.raises(ValueError, match="unknown operation"):
        Op(0, 0, "delete", "x", (), "ok", 0, 1)
    with pytest.raises(ValueError, match="before"):
        Op(0, 0, "read", "x", (), 1, 2, 1)


def _random_linearizable(rng: random.Random, n: int, clients: int) -> list[Op]:
    """Ops by ``clients`` sequential clients on two keys, each applied at a random instant."""
    events: list[tuple[float, int, str, str, tuple[Any, ...], float, float | None]] = []
    for client in range(clients):
        t = rng.uniform(0, 3)
        for _ in range(n // clients):
            start = t + rng.uniform(0, 2)
            point = start + rng.uniform(0, 3)
            end = point + rng.uniform(0, 3)
            kind = rng.choice(["read", "write", "cas", "incr"])
            args: tuple[Any, ...] = {
                "read": (),
                "write": (rng.randrange(4),),
                "cas": (rng.randrange(4), rng.randrange(4)),
                "incr": (),
            }[kind]
            unknown = rng.random() < 0.15
            events.append((point, client, kind, rng.choice("ab"), args, start, None))
            if not unknown:
                events[-1] = events[-1][:6] + (end,)
            t = end if not unknown else end + 100  # a client waits out an unknown outcome
    state: dict[str, Any] = {}
    ops = []
    for _point, client, kind, key, args, start, end in sorted(events):
        value = state.get(key)
        result: Any
        if kind == "read":
            result = value
        elif kind == "write":
            result = "ok"
        elif kind == "cas":
            result = value == args[0]
        else:
            result = (value or 0) + 1
        _, state[key] = step(value, kind, args, result)
        ops.append(Op(len(ops), client, kind, key, args, result, start, end))
    return ops


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(2, 6))
def test_histories_built_from_a_linearization_pass(seed: int, clients: int) -> None:
    ops = _random_linearizable(random.Random(seed), 60, clients)
    assert check(ops), check(ops)


def _brute_force(ops: Sequence[Op]) -> bool:
    """Try every order of every subset of the unknown ops plus all the completed ones."""
    known = [o for o in ops if not o.unknown]
    unknown = [o for o in ops if o.unknown]
    for size in range(len(unknown) + 1):
        for chosen in itertools.combinations(unknown, size):
            for order in itertools.permutations([*known, *chosen]):
                if _valid(order):
                    return True
    return False


def _valid(order: Sequence[Op]) -> bool:
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            if b.complete is not None and b.complete < a.invoke:
                return False  # b finished before a began but comes after it
    states: dict[Any, Any] = {}
    for o in order:
        result = o.result
        if o.unknown:
            # Any result: take the one the model produces.
            _, after = step(states.get(o.key), o.kind, o.args, _any_result(o, states.get(o.key)))
            states[o.key] = after
            continue
        possible, states[o.key] = step(states.get(o.key), o.kind, o.args, result)
        if not possible:
            return False
    return True


def _any_result(o: Op, value: Any) -> Any:
    return {
        "read": value,
        "write": "ok",
        "cas": value == (o.args[0] if o.args else None),
        "incr": (value or 0) + 1,
    }[o.kind]


@st.composite
def _small_history(draw: st.DrawFn) -> list[Op]:
    n = draw(st.integers(1, 5))
    ops = []
    for i in range(n):
        kind = draw(st.sampled_from(["read", "write", "cas", "incr"]))
        args: tuple[Any, ...] = {
            "read": (),
            "write": (draw(st.integers(1, 2)),),
            "cas": (draw(st.sampled_from([None, 1, 2])), draw(st.integers(1, 2))),
            "incr": (),
        }[kind]
        result: Any = {
            "read": draw(st.sampled_from([None, 1, 2, 3])),
            "write": "ok",
            "cas": draw(st.booleans()),
            "incr": draw(st.integers(1, 3)),
        }[kind]
        start = draw(st.integers(0, 6))
        end = None if draw(st.integers(0, 4)) == 0 else start + draw(st.integers(0, 4))
        ops.append(Op(i, i, kind, "k", args, result, start, end))
    return ops


@settings(max_examples=400, deadline=None)
@given(_small_history())
def test_agrees_with_brute_force(ops: list[Op]) -> None:
    assert bool(check_key("k", ops)) == _brute_force(ops)
