"""Nodes upgraded in place: each data directory holds the SQLite `raft.db` of earlier versions
instead of the segment log. Every node starts from what its `raft.db` holds: here the
namespace is rebuilt from those logs alone, with nothing acknowledged lost."""

from __future__ import annotations

from pathlib import Path

import trio

from ringfs.fs.mount import wait_for_filesystem
from ringfs.node.meta.commands import ROOT_INO, Mkdir, ReadDir
from ringfs.node.raft.storage import LEGACY_DB, LOG_DIR, RaftLog
from tests.cluster.conftest import start_nodes
from tests.cluster.test_snapshots import leader_of, members
from tests.unit.raft.test_storage import write_legacy

DEADLINE = 60.0
NAMES = [b"d%02d" % i for i in range(20)]


def downgrade(data_dir: Path) -> None:
    """Make `data_dir` as an earlier version left it: the log as `raft.db`, and no metadata
    database either, so that only the log can bring the namespace back."""
    log = RaftLog(data_dir / LOG_DIR)
    hard_state, snapshot, kept = log.load()
    log.close()
    assert snapshot is None  # the whole history is in the log
    write_legacy(data_dir / LEGACY_DB, hard_state, snapshot, kept)
    for segment in (data_dir / LOG_DIR).iterdir():
        segment.unlink()
    (data_dir / LOG_DIR).rmdir()
    for suffix in ("", "-wal", "-shm"):
        (data_dir / f"meta.db{suffix}").unlink(missing_ok=True)


async def test_nodes_with_a_legacy_raft_db_start_from_it(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    nodes = await start_nodes(tmp_path, nursery)
    with trio.fail_after(DEADLINE):
        cluster = await nodes.client()
        await wait_for_filesystem(cluster)
        for name in NAMES:
            await cluster.meta_apply(Mkdir(ROOT_INO, name, 0o755, 0, 0, 0))
        for name in list(nodes.configs):
            await nodes.stop(name)
        for config in nodes.configs.values():
            downgrade(config.data_dir)
        for name in nodes.configs:
            await nodes.start(name)
        cluster = await nodes.client()
        await leader_of(cluster)
        listing = await cluster.meta_query(ReadDir(ROOT_INO, 0, 100))
        assert [entry.name for entry in listing if entry.name not in (b".", b"..")] == NAMES
        status = await members(cluster)
        assert all(s["failure"] is None for s in status.values())
    for config in nodes.configs.values():
        assert not (config.data_dir / LEGACY_DB).exists()
        assert (config.data_dir / LOG_DIR).is_dir()
