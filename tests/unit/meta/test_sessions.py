"""Client sessions in the state machine: opened, used, and ended by `Expire` with everything
the client kept, after which nothing of the old session can run again."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ringfs.node.errors import SESSION_EXPIRED, NodeError
from ringfs.node.meta.commands import (
    ROOT_INO,
    Chunk,
    ChunkUpdate,
    Clients,
    Command,
    CommitChunks,
    Delegate,
    Entry,
    Expire,
    Garbage,
    GetAttr,
    Init,
    Mkdir,
    Mknod,
    OpenSession,
    Outcome,
    Reserve,
    Rmdir,
    Unlink,
    decode_result,
)
from ringfs.node.meta.state import MetaState

A, B = b"mount-a", b"mount-b"
T0 = 1_000
REG = stat.S_IFREG | 0o644
CLIENT_TABLES = ("clients", "sessions", "inode_ranges", "delegations", "orphans")


@pytest.fixture
def meta(tmp_path: Path) -> Iterator[MetaState]:
    with MetaState(tmp_path / "meta.db") as state:
        state.apply_batch([Entry(Init(4096, 0, 0, T0))])
        yield state


def run(meta: MetaState, command: Command, client: bytes | None = None, seq: int | None = None,
        acked_below: int | None = None) -> Outcome:  # fmt: skip
    [outcome] = meta.apply_batch([Entry(command, client, seq, acked_below)])
    return outcome


def ok(meta: MetaState, command: Command, *session: Any) -> Any:
    outcome = run(meta, command, *session)
    assert outcome.error is None, outcome
    return decode_result(command, outcome.result)


def rows_of(meta: MetaState, client: bytes) -> dict[str, int]:
    """How many rows each per-client table keeps for `client`."""
    found = {}
    for table, rows in meta.dump():
        if table in CLIENT_TABLES:
            column = 1 if table in ("orphans", "delegations") else 0
            found[table] = sum(1 for row in rows if row[column] == client)
    return found


def test_a_session_must_be_opened_before_its_commands_run(meta: MetaState) -> None:
    mkdir = Mkdir(ROOT_INO, b"d", 0o755, 0, 0, T0)
    assert run(meta, mkdir, A, 1) == Outcome(None, SESSION_EXPIRED)
    assert rows_of(meta, A) == dict.fromkeys(CLIENT_TABLES, 0)  # nothing kept for it
    ok(meta, OpenSession(), A)
    ok(meta, OpenSession(), A)  # opening twice is opening once
    ok(meta, mkdir, A, 1)
    assert run(meta, mkdir, A, 1).error is None  # the stored outcome, not EEXIST
    assert run(meta, mkdir).error == "EEXIST"  # no session: runs every time
    assert run(meta, OpenSession()).error == "EINVAL"  # a session is a client's


def test_expire_ends_everything_a_client_kept_and_nothing_else(meta: MetaState) -> None:
    ok(meta, OpenSession(), A)
    ok(meta, OpenSession(), B)
    orphan = {}
    for client in (A, B):
        d = ok(meta, Mkdir(ROOT_INO, client, 0o755, 0, 0, T0), client, 1, 1).ino
        ok(meta, Delegate(d), client, 2, 1)
        ok(meta, Reserve(10), client, 3, 1)
        orphan[client] = ok(meta, Mknod(d, b"open", REG, 0, 0, 0, T0), client, 4, 1).ino
        ok(meta, Unlink(d, b"open", T0), client, 5, 1)  # unlinked while open: an orphan
    kept = {"clients": 1, "sessions": 5, "inode_ranges": 1, "delegations": 1, "orphans": 1}
    assert rows_of(meta, A) == rows_of(meta, B) == kept
    assert meta.query(Clients(b"", 10)) == [A, B]

    ok(meta, Expire((A, b"never heard of")))
    assert rows_of(meta, A) == dict.fromkeys(CLIENT_TABLES, 0)
    assert rows_of(meta, B) == kept
    assert meta.query(Clients(b"", 10)) == [B]
    # A's orphan is gone, B's is kept for B.
    with pytest.raises(NodeError) as gone:
        meta.query(GetAttr(orphan[A]))
    assert gone.value.name == "ENOENT"
    assert meta.query(GetAttr(orphan[B])).nlink == 0


def test_nothing_of_an_expired_session_runs_again(meta: MetaState) -> None:
    ok(meta, OpenSession(), A)
    mkdir = Mkdir(ROOT_INO, b"d", 0o755, 0, 0, T0)
    ok(meta, mkdir, A, 1)
    ok(meta, Expire((A,)))
    ok(meta, Rmdir(ROOT_INO, b"d", T0))
    # A late copy of the command: its stored outcome is gone, and it must not run twice.
    assert run(meta, mkdir, A, 1) == Outcome(None, SESSION_EXPIRED)
    assert run(meta, Mkdir(ROOT_INO, b"e", 0o755, 0, 0, T0), A, 2) == Outcome(None, SESSION_EXPIRED)
    assert rows_of(meta, A) == dict.fromkeys(CLIENT_TABLES, 0)
    assert meta.query(Clients(b"", 10)) == []
    # The same client under a new id goes on.
    ok(meta, OpenSession(), B)
    ok(meta, Mkdir(ROOT_INO, b"e", 0o755, 0, 0, T0), B, 3)


def test_expire_frees_the_blocks_of_the_orphans_it_ends(meta: MetaState) -> None:
    ok(meta, OpenSession(), A)
    f = ok(meta, Mknod(ROOT_INO, b"f", REG, 0, 0, 0, T0), A, 1).ino
    block = _commit_one_block(meta, f)
    ok(meta, Unlink(ROOT_INO, b"f", T0), A, 2)
    assert meta.query(Garbage(10)) == []  # an orphan keeps its blocks
    ok(meta, Expire((A,)))
    assert meta.query(Garbage(10)) == [block]


def test_clients_are_listed_in_pages(meta: MetaState) -> None:
    ids = [b"c%02d" % i for i in range(7)]
    for client in ids:
        ok(meta, OpenSession(), client)
    pages, after = [], b""
    while page := meta.query(Clients(after, 3)):
        pages.append(page)
        after = page[-1]
    assert pages == [ids[0:3], ids[3:6], ids[6:7]]
    with pytest.raises(NodeError) as refused:
        meta.query(Clients(b"", 0))
    assert refused.value.name == "EINVAL"


def _commit_one_block(meta: MetaState, ino: int) -> bytes:
    block = b"\x01" * 16
    chunk = Chunk(0, block, 4096, b"\x02" * 32)
    ok(meta, CommitChunks(ino, (ChunkUpdate(chunk, b"", 0),), 4096, None, None, None, None, T0))
    return block
