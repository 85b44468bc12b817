"""Every meta-group member copies what it committed from `meta.db`'s WAL into the database file
itself, in the background (`ReplicatedMeta._checkpoint_applied`): its connection never does,
since that would stall its event loop inside a commit."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
import trio

from ringfs.fs.mount import wait_for_filesystem
from ringfs.node.meta import replica
from ringfs.node.meta.commands import ROOT_INO, Mkdir
from tests.cluster.conftest import start_nodes, wait_until

DIRECTORIES = 200


def directories_without_the_wal(meta_db: Path, scratch: Path) -> int:
    """How many directories the database file alone holds: a copy of it without its WAL."""
    copy = scratch / "alone.db"
    copy.unlink(missing_ok=True)
    shutil.copyfile(meta_db, copy)
    try:
        with sqlite3.connect(f"file:{copy}?mode=ro", uri=True) as db:
            (count,) = db.execute("SELECT COUNT(*) FROM dentries WHERE parent = ?", (ROOT_INO,))
            return int(count[0])
    except sqlite3.DatabaseError:  # copied while a checkpoint was writing it: look again
        return -1


async def test_members_checkpoint_the_wal_while_commands_apply(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replica, "CHECKPOINT_INTERVAL", 0.2)
    nodes = await start_nodes(tmp_path / "nodes", nursery)
    cluster = await nodes.client()
    await wait_for_filesystem(cluster)
    for i in range(DIRECTORIES):
        await cluster.meta_apply(Mkdir(ROOT_INO, b"d%03d" % i, 0o755, 0, 0, 0))
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    async def all_checkpointed() -> bool:
        return all(
            directories_without_the_wal(tmp_path / "nodes" / name / "meta.db", scratch)
            == DIRECTORIES
            for name in nodes.configs
        )

    await wait_until(all_checkpointed)
