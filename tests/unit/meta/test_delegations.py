"""Reserved inode numbers, held directories and batches in the metadata state machine, and the
attribute rules a mount uses to show a change before the leader applies it."""

from __future__ import annotations

import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfs.node.errors import DELEGATED
from ringfs.node.meta import effects
from ringfs.node.meta.commands import (
    ROOT_INO,
    Attr,
    Batch,
    Command,
    Delegate,
    Entry,
    GetAttr,
    Init,
    Lookup,
    Mkdir,
    Mknod,
    OpenSession,
    Outcome,
    Release,
    Rename,
    Reserve,
    Rmdir,
    Setattr,
    Symlink,
    Unlink,
    decode_result,
)
from ringfs.node.meta.state import MetaState

A, B = b"mount-a", b"mount-b"
T0 = 1_000
REG = stat.S_IFREG | 0o644


@pytest.fixture
def meta(tmp_path: Path) -> Iterator[MetaState]:
    with MetaState(tmp_path / "meta.db") as state:
        state.apply_batch([Entry(Init(4096, 0, 0, T0))])
        state.apply_batch([Entry(OpenSession(), A), Entry(OpenSession(), B)])
        yield state


_seqs = iter(range(1, 10**9))


def run(meta: MetaState, client: bytes | None, command: Command) -> Outcome:
    seq = None if client is None else next(_seqs)
    [outcome] = meta.apply_batch([Entry(command, client, seq)])
    return outcome


def ok(meta: MetaState, client: bytes | None, command: Command) -> Any:
    outcome = run(meta, client, command)
    assert outcome.error is None, outcome
    return decode_result(command, outcome.result)


def attr(meta: MetaState, ino: int) -> Attr:
    result: Attr = meta.query(GetAttr(ino))
    return result


def held_dir(meta: MetaState, client: bytes, name: bytes = b"d") -> int:
    ino: int = ok(meta, client, Mkdir(ROOT_INO, name, 0o755, 0, 0, T0)).ino
    ok(meta, client, Delegate(ino))
    return ino


def test_reserved_numbers_name_new_inodes_of_their_client_only(meta: MetaState) -> None:
    first = ok(meta, A, Reserve(10))
    made = ok(meta, A, Mknod(ROOT_INO, b"f", REG, 0, 0, 0, T0, first + 3))
    assert made.ino == first + 3
    assert meta.query(Lookup(ROOT_INO, b"f")) == made
    # Taken, another client's, or outside the range: refused.
    assert run(meta, A, Mknod(ROOT_INO, b"g", REG, 0, 0, 0, T0, first + 3)).error == "EINVAL"
    assert run(meta, B, Mknod(ROOT_INO, b"g", REG, 0, 0, 0, T0, first + 4)).error == "EINVAL"
    assert run(meta, A, Mknod(ROOT_INO, b"g", REG, 0, 0, 0, T0, first + 10)).error == "EINVAL"
    # The server's own numbers never meet a reserved range.
    assert ok(meta, B, Mkdir(ROOT_INO, b"x", 0o755, 0, 0, T0)).ino == first + 10
    # A new reservation replaces the old one.
    second = ok(meta, A, Reserve(5))
    assert second == first + 11
    assert run(meta, A, Mknod(ROOT_INO, b"g", REG, 0, 0, 0, T0, first + 4)).error == "EINVAL"
    assert run(meta, None, Reserve(5)).error == "EINVAL"
    assert run(meta, A, Reserve(0)).error == "EINVAL"


def test_a_held_directory_refuses_other_clients_without_remembering_it(meta: MetaState) -> None:
    d = held_dir(meta, A)
    ok(meta, A, Mknod(d, b"f", REG, 0, 0, 0, T0))
    held_off = [
        Mknod(d, b"g", REG, 0, 0, 0, T0),
        Mkdir(d, b"g", 0o755, 0, 0, T0),
        Symlink(d, b"g", b"t", 0, 0, T0),
        Unlink(d, b"f", T0),
        Unlink(d, b"missing", T0),  # A may be about to create it
        Rename(d, b"f", ROOT_INO, b"f", 0, T0),
        Rmdir(ROOT_INO, b"d", T0),
        Delegate(d),
    ]
    before = meta.dump()
    for command in held_off:
        seq = next(_seqs)
        [outcome] = meta.apply_batch([Entry(command, B, seq)])
        assert outcome == Outcome([d], DELEGATED), command
        # Not stored: once the directory is released, the same request runs.
    assert meta.dump() == before
    # What does not touch its names is not held off: attributes, a move of the directory.
    ok(meta, B, Setattr(d, 0o700, None, None, None, None, None, T0))
    ok(meta, B, Rename(ROOT_INO, b"d", ROOT_INO, b"e", 0, T0))
    assert meta.holders([d]) == {d: A}


def test_a_refused_request_runs_when_retried_after_the_release(meta: MetaState) -> None:
    d = held_dir(meta, A)
    entry = Entry(Mknod(d, b"g", REG, 0, 0, 0, T0), B, 77)
    assert meta.apply_batch([entry])[0].error == DELEGATED
    # B cannot release what A holds; A (or the leader, for A) can.
    assert run(meta, B, Release((d,), A)).error == "EPERM"
    ok(meta, None, Release((d,), A))
    assert meta.holders([d]) == {}
    [outcome] = meta.apply_batch([entry])
    assert outcome.error is None
    assert meta.apply_batch([entry]) == [outcome]  # and only once


def test_a_release_that_lists_nothing_gives_back_all_the_holder_holds(meta: MetaState) -> None:
    d, e, f = held_dir(meta, A, b"d"), held_dir(meta, A, b"e"), held_dir(meta, B, b"f")
    ok(meta, None, Release((), A))  # the leader, for a holder that stopped answering
    assert meta.holders([d, e, f]) == {f: B}


def test_removing_a_held_directory_ends_its_delegation(meta: MetaState) -> None:
    d = held_dir(meta, A)
    ok(meta, A, Rmdir(ROOT_INO, b"d", T0))
    assert meta.holders([d]) == {}
    assert held_dir(meta, B, b"d") != d


def test_a_batch_applies_in_order_while_its_directories_are_held(meta: MetaState) -> None:
    d = held_dir(meta, A)
    first = ok(meta, A, Reserve(100))
    batch = Batch(
        (d,),
        (
            Mkdir(d, b"sub", 0o755, 0, 0, T0, first),
            Delegate(first),
            Mknod(first, b"f", REG, 0, 0, 0, T0, first + 1),
            Mknod(first, b"f", REG, 0, 0, 0, T0, first + 2),  # EEXIST, alone
            Rename(first, b"f", d, b"g", 0, T0),
        ),
    )
    outcomes = ok(meta, A, batch)
    assert [o.error for o in outcomes] == [None, None, None, "EEXIST", None]
    assert meta.query(Lookup(d, b"g")).ino == first + 1
    assert meta.holders([d, first]) == {d: A, first: A}
    # Every change of the batch is told to the feed, even those before a failed command.
    [(client, inodes, names)] = meta.take_changes()
    assert client == A
    assert {first, first + 1, d} <= set(inodes)
    assert {(d, b"g"), (d, b"sub")} <= set(names)
    # Once a directory it relied on is gone to another, the batch does nothing at all.
    ok(meta, None, Release((d,), A))
    before = _namespace(meta)
    late = Batch((d, first), (Unlink(d, b"g", T0),))
    assert run(meta, A, late).error == "ESTALE"
    assert _namespace(meta) == before
    assert run(meta, A, Batch((), (Batch((), ()),))).error == "EINVAL"


def _namespace(meta: MetaState) -> list[Any]:
    """Every table but the sessions (which keep each request's outcome)."""
    return [table for table in meta.dump() if table[0] != "sessions"]


# --- the rules a mount shows changes by ---------------------------------------------------------

NAMES = st.sampled_from([b"a", b"b", b"c"])
KINDS = st.sampled_from(["file", "dir", "link"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["create", "unlink", "rename", "rmdir"]), NAMES, NAMES, KINDS),
        max_size=20,
    ),
    st.booleans(),
)
def test_predicted_attributes_are_what_the_state_machine_makes(
    steps: list[tuple[str, bytes, bytes, str]], setgid: bool
) -> None:
    """Each change the state machine applies gives the attributes `effects` predicts from the
    attributes before it, for the inode it makes, moves or unlinks and for its directory."""
    with tempfile.TemporaryDirectory() as tmp, MetaState(Path(tmp) / "m.db") as meta:
        meta.apply_batch([Entry(Init(4096, 0, 0, T0)), Entry(OpenSession(), A)])
        d = ok(meta, A, Mkdir(ROOT_INO, b"d", 0o2775 if setgid else 0o755, 5, 6, T0)).ino
        if setgid:
            ok(meta, A, Setattr(d, 0o2775, None, None, None, None, None, T0))
        first, now = ok(meta, A, Reserve(100)), T0
        for number, (op, name, other, kind) in enumerate(steps):
            now += 7
            parent = attr(meta, d)
            present = meta.query(Lookup(d, name)) if _exists(meta, d, name) else None
            if op == "create" and present is None:
                command = _create(d, name, kind, now, first + number)
                made = ok(meta, A, command)
                assert made == effects.created(parent, command, first + number)
                subdirs = 1 if kind == "dir" else 0
                assert attr(meta, d) == effects.entry_changed(parent, now, subdirs)
            elif op == "unlink" and present is not None and not stat.S_ISDIR(present.mode):
                left = ok(meta, A, Unlink(d, name, now))
                assert left == effects.link_dropped(present, now)
                assert attr(meta, d) == effects.entry_changed(parent, now)
            elif op == "rmdir" and present is not None and stat.S_ISDIR(present.mode):
                ok(meta, A, Rmdir(d, name, now))
                assert attr(meta, d) == effects.entry_changed(parent, now, -1)
            elif op == "rename" and present is not None and not stat.S_ISDIR(present.mode):
                target = meta.query(Lookup(d, other)) if _exists(meta, d, other) else None
                if target is not None and stat.S_ISDIR(target.mode):
                    continue
                replaced = ok(meta, A, Rename(d, name, d, other, 0, now))
                if name != other:
                    assert attr(meta, present.ino) == effects.moved(present, now)
                    assert attr(meta, d) == effects.entry_changed(parent, now)
                    if target is not None:
                        assert replaced == effects.link_dropped(target, now)


def _exists(meta: MetaState, parent: int, name: bytes) -> bool:
    try:
        meta.query(Lookup(parent, name))
    except Exception:  # noqa: BLE001
        return False
    return True


def _create(parent: int, name: bytes, kind: str, now: int, ino: int) -> Mknod | Mkdir | Symlink:
    if kind == "dir":
        return Mkdir(parent, name, 0o4755, 7, 8, now, ino)
    if kind == "link":
        return Symlink(parent, name, b"some/where", 7, 8, now, ino)
    return Mknod(parent, name, REG, 0, 7, 8, now, ino)
