"""`MetaMachine`, the state machine Raft drives: log entries in, outcomes out, the applied
index stored with them; a failing database stops the member instead of answering."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Any

import msgpack
import pytest

from ringfs.node.errors import StorageFailure
from ringfs.node.meta import replica
from ringfs.node.meta.commands import ROOT_INO, Entry, Init, Mkdir, Outcome
from ringfs.node.meta.replica import Applied, MetaMachine
from ringfs.node.raft.core import Entry as LogEntry
from ringfs.node.raft.core import EntryKind, SnapshotMeta


def command(index: int, entry: Entry) -> LogEntry:
    data = msgpack.packb(entry.to_wire(), use_bin_type=True)
    return LogEntry(1, index, EntryKind.COMMAND, data)


def mkdir(index: int, name: bytes) -> LogEntry:
    return command(index, Entry(Mkdir(ROOT_INO, name, 0o755, 0, 0, 1)))


@pytest.fixture
def machine(tmp_path: Path) -> MetaMachine:
    machine = MetaMachine(tmp_path / "meta.db")
    machine.apply([command(1, Entry(Init(4096, 0, 0, 1)))])
    machine.state.commit()
    return machine


def committed_index(path: Path) -> int:
    """The applied index another connection (a snapshot's copy, a restarted node) reads."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        (index,) = db.execute("SELECT value FROM counters WHERE name = 'applied_index'").fetchone()
    return int(index)


def test_batches_commit_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replica, "COMMIT_BATCHES", 3)
    monkeypatch.setattr(replica, "COMMIT_INTERVAL", 60.0)
    machine = MetaMachine(tmp_path / "meta.db")
    machine.apply([command(1, Entry(Init(4096, 0, 0, 1)))])
    machine.apply([mkdir(2, b"a")])
    assert machine.applied_index() == 2  # this connection reads them at once
    assert committed_index(machine.path) == 0
    machine.apply([mkdir(3, b"b")])  # the third since the last commit
    assert committed_index(machine.path) == 3
    machine.apply([mkdir(4, b"c")])
    assert committed_index(machine.path) == 3
    monkeypatch.setattr(replica, "COMMIT_INTERVAL", 0.0)
    machine.apply([mkdir(5, b"d")])
    assert committed_index(machine.path) == 5
    machine.state.close()


def test_batches_left_open_are_committed_once_due(
    machine: MetaMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When no batch comes to commit them (`ReplicatedMeta` asks every `COMMIT_INTERVAL`)."""
    machine.apply([mkdir(2, b"a")])
    machine.commit_due()
    assert committed_index(machine.path) == 1  # not due yet
    monkeypatch.setattr(replica, "COMMIT_INTERVAL", 0.0)
    machine.commit_due()
    assert committed_index(machine.path) == 2


def test_applying_never_checkpoints_the_wal(
    machine: MetaMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite checkpoints inside the COMMIT that fills the WAL past 1000 pages, on the thread
    that commits, which for a replica is its event loop: the replica leaves that to
    `checkpoint`, which `ReplicatedMeta` runs in a worker thread."""
    monkeypatch.setattr(replica, "COMMIT_INTERVAL", 0.0)  # every batch commits
    size = machine.path.stat().st_size
    for index in range(2, 1500):
        machine.apply([mkdir(index, b"d%d" % index)])
    wal = Path(f"{machine.path}-wal")
    assert wal.stat().st_size > 1000 * 4096  # past SQLite's own checkpoint threshold
    assert machine.path.stat().st_size == size  # no page copied into meta.db
    assert committed_index(machine.path) == 1499  # other connections read through the WAL
    machine.checkpoint()
    assert machine.path.stat().st_size > size
    assert committed_index(machine.path) == 1499
    machine.state.close()


class FailingCommits:
    """A connection whose COMMIT fails as a failing disk's does."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)

    def execute(self, sql: str, *params: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("disk I/O error")
        return self.db.execute(sql, *params)


def test_a_failed_commit_closes_the_database(
    machine: MetaMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its batches may be gone with it: nothing may be answered from what is left, and the
    member reopens the database at its last commit."""
    machine.apply([mkdir(2, b"a")])
    machine.state._db = FailingCommits(machine.state._db)  # type: ignore[assignment]
    monkeypatch.setattr(replica, "COMMIT_INTERVAL", 0.0)
    with pytest.raises(StorageFailure, match="disk I/O error"):
        machine.commit_due()
    with pytest.raises(StorageFailure, match="meta.db"):
        machine.apply([mkdir(3, b"b")])
    machine.reopen()
    assert machine.applied_index() == 1


def test_a_crash_takes_back_only_the_open_batches(machine: MetaMachine) -> None:
    machine.apply([mkdir(2, b"a")])
    machine.state._db.close()  # the process dies: the transaction never commits
    again = MetaMachine(machine.path)
    assert again.applied_index() == 1  # the log applies index 2 again
    again.apply([mkdir(2, b"a")])
    assert again.applied_index() == 2
    again.state.close()


def test_close_and_snapshots_commit_the_open_batches(machine: MetaMachine) -> None:
    machine.apply([mkdir(2, b"a")])
    index, image = machine.snapshot()
    assert index == 2
    image.unlink()
    machine.apply([mkdir(3, b"b")])
    machine.state.close()
    assert committed_index(machine.path) == 3


def test_entries_apply_in_one_batch_with_their_index(machine: MetaMachine) -> None:
    noop = LogEntry(1, 3, EntryKind.NOOP, b"")
    results = machine.apply([mkdir(2, b"a"), noop, mkdir(4, b"a")])
    assert results[1] is None
    assert isinstance(results[0], Applied)
    assert results[0].outcome.error is None
    assert results[0].changed == (ROOT_INO, 2)  # the parent and the new directory
    assert results[2] == Applied(Outcome(None, "EEXIST"), (), 4)
    assert machine.applied_index() == 4


def test_its_own_proposal_is_applied_as_the_entry_it_was_encoded_from(
    machine: MetaMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = Entry(Mkdir(ROOT_INO, b"mine", 0o755, 0, 0, 1))
    data = msgpack.packb(entry.to_wire(), use_bin_type=True)
    decoded: list[bytes] = []
    decode = Entry.from_wire

    def counted(wire: Any) -> Entry:
        decoded.append(wire[0][2])
        return decode(wire)

    monkeypatch.setattr(replica.Entry, "from_wire", counted)
    with machine.proposing(data, entry):
        # The same bytes from another object (as read back from the log on disk): decoded.
        (other,) = machine.apply([LogEntry(1, 2, EntryKind.COMMAND, bytes(bytearray(data)))])
        (mine,) = machine.apply([LogEntry(1, 3, EntryKind.COMMAND, data)])
    (after,) = machine.apply([LogEntry(1, 4, EntryKind.COMMAND, data)])
    assert decoded == [b"mine", b"mine"]  # index 2, and index 4 once no longer proposing
    assert (other.outcome.error, mine.outcome.error, after.outcome.error) == (
        None,
        "EEXIST",
        "EEXIST",
    )
    assert machine.applied_index() == 4


def test_a_full_disk_stops_the_member_with_nothing_applied(machine: MetaMachine) -> None:
    db = machine.state._db
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.execute(f"PRAGMA max_page_count = {pages}")
    batch = [mkdir(i, b"d%04d" % i + b"x" * 200) for i in range(2, 200)]
    with pytest.raises(StorageFailure, match="meta.db"):
        machine.apply(batch)
    assert machine.applied_index() == 1


def test_a_failing_batch_takes_back_the_batches_left_open(machine: MetaMachine) -> None:
    """The member then restarts from what was committed, and its log applies the rest again."""
    machine.apply([mkdir(2, b"a")])
    db = machine.state._db
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StorageFailure, match="meta.db"):
        machine.apply([mkdir(i, b"d%04d" % i + b"x" * 200) for i in range(3, 200)])
    assert machine.applied_index() == 1


def test_a_damaged_snapshot_image_is_refused_and_the_database_kept(
    machine: MetaMachine, tmp_path: Path
) -> None:
    machine.apply([mkdir(2, b"kept")])
    image = tmp_path / "incoming"
    image.write_bytes(b"SQLite format 3\0" + b"x" * 5000)
    with pytest.raises(StorageFailure, match="damaged"):
        machine.restore(SnapshotMeta(9, 1, ("n1",)), image)
    assert machine.applied_index() == 2
    assert not image.exists()


def test_an_image_of_another_index_is_refused_and_the_database_kept(
    machine: MetaMachine, tmp_path: Path
) -> None:
    index, image = machine.snapshot()
    machine.apply([mkdir(2, b"kept")])
    with pytest.raises(StorageFailure, match="damaged"):
        machine.restore(SnapshotMeta(index + 5, 1, ("n1",)), image)
    assert machine.applied_index() == 2


def test_a_snapshot_is_a_durable_file_that_another_replica_installs(
    machine: MetaMachine, tmp_path: Path
) -> None:
    machine.apply([mkdir(2, b"a"), mkdir(3, b"b")])
    index, image = machine.snapshot()
    assert index == 3
    assert image.parent == machine.path.parent
    (tmp_path / "other").mkdir()
    other = MetaMachine(tmp_path / "other" / "meta.db")
    copy = tmp_path / "other" / "incoming"
    copy.write_bytes(image.read_bytes())
    other.restore(SnapshotMeta(index, 1, ("n1",)), copy)
    assert other.applied_index() == 3
    assert other.state.dump() == machine.state.dump()
    assert not copy.exists()  # it became the database


def test_images_a_previous_run_took_are_deleted(machine: MetaMachine) -> None:
    _, first = machine.snapshot()
    machine.apply([mkdir(2, b"a")])
    _, second = machine.snapshot()
    assert first.exists()  # the caller deletes each when done with it
    MetaMachine(machine.path)  # a restart: the database holds everything they held
    assert not first.exists()
    assert not second.exists()


def test_a_snapshot_is_of_one_moment_while_entries_apply(machine: MetaMachine) -> None:
    """The copy reads on a connection of its own: applying goes on, and the image holds
    exactly the entries up to the index it reports."""
    taken: list[tuple[int, Path]] = []
    thread = threading.Thread(target=lambda: taken.append(machine.snapshot()))
    thread.start()
    for index in range(2, 400):
        machine.apply([mkdir(index, b"d%d" % index)])
    thread.join()
    ((index, image),) = taken
    with contextlib.closing(sqlite3.connect(image)) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM dentries").fetchone()
        (applied,) = db.execute(
            "SELECT value FROM counters WHERE name = 'applied_index'"
        ).fetchone()
    assert applied == index
    assert count == index - 1  # one directory per entry after the Init at 1


def test_two_images_of_one_index_are_two_files(machine: MetaMachine) -> None:
    """The caller deletes each image once done with it: deleting one must not take the other."""
    (first_index, first), (second_index, second) = machine.snapshot(), machine.snapshot()
    assert first_index == second_index
    first.unlink()
    assert second.read_bytes()[:16] == b"SQLite format 3\0"
