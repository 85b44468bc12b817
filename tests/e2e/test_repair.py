"""Repair with real node processes and a real mount: a node whose data directory was wiped is
refilled with the same blocks, byte for byte, and `ringfs repair --wait` says when; then another
node is killed and every file still reads back."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.e2e.conftest import Cluster, Mount, ringfs_argv

FILES = 12


def block_files(node_data: Path) -> dict[str, bytes]:
    """Every block file of a node's store, by name."""
    found = {}
    for path in list((node_data / "store" / "blocks").glob("*/*/*")):
        with contextlib.suppress(FileNotFoundError):  # collected meanwhile
            found[path.name] = path.read_bytes()
    return found


def repair_wait(cluster: Cluster) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ringfs_argv(
            "repair", "--wait", "--timeout", "60",
            "--cluster", cluster.seeds, "--secret-file", str(cluster.secret_file),
        ),
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip


def test_a_wiped_node_is_refilled_and_the_files_survive_losing_another(
    cluster: Cluster, mount_factory: Callable[..., Mount], expected_logs: list[str]
) -> None:
    expected_logs.append("unavailable")  # the mount meets the stopped nodes
    mount = mount_factory()
    digests = {}
    for i in range(FILES):
        data = os.urandom(100_000 + 300_000 * i)  # past what the metadata keeps inline
        (mount.path / f"f{i}").write_bytes(data)
        digests[f"f{i}"] = hashlib.sha256(data).hexdigest()
    assert repair_wait(cluster).returncode == 0  # the trailing copies are all there
    first, wiped, killed = cluster.nodes
    before = block_files(first.data)
    assert len(before) >= FILES
    assert block_files(wiped.data) == before  # R = 3 on 3 nodes: every node holds every block

    cluster.stop(wiped)
    shutil.rmtree(wiped.data / "store")
    cluster.start(wiped)
    done = repair_wait(cluster)
    assert done.returncode == 0, done.stderr
    assert "3/3 nodes whole" in done.stderr
    assert block_files(wiped.data) == before
    assert f"repair {wiped.name}: " in cluster.status()

    cluster.kill(killed)
    fresh = mount_factory("fresh")  # nothing cached: every block comes from the nodes
    for name, digest in digests.items():
        assert hashlib.sha256((fresh.path / name).read_bytes()).hexdigest() == digest


def test_what_a_killed_mount_uploaded_and_never_committed_is_collected(
    cluster: Cluster, mount_factory: Callable[..., Mount], expected_logs: list[str]
) -> None:
    expected_logs += ["unavailable", "abandoned"]
    cluster.node_args = ("--orphan-age", "5", "--repair-interval", "0.5", "--gc-grace", "0.5")
    for node in cluster.nodes:
        cluster.stop(node)
    cluster.start(*cluster.nodes)
    mount = mount_factory()
    kept = os.urandom(1_000_000)
    (mount.path / "kept").write_bytes(kept)
    committed = [set(block_files(node.data)) for node in cluster.nodes]
    assert all(len(names) == 1 for names in committed)

    writer = subprocess.Popen(  # 40 MiB without a close: full chunks are uploaded as they fill
        [sys.executable, "-c", WRITE_AND_WAIT, str(mount.path / "big")], stdout=subprocess.PIPE
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == b"written\n"
        counts = [len(block_files(node.data)) for node in cluster.nodes]
        assert all(count > 1 for count in counts), (counts, mount.log())  # uploaded
        mount.process.kill()
        mount.process.wait()
    finally:
        writer.kill()
        writer.wait()
        if writer.stdout is not None:
            writer.stdout.close()
        mount.abort()

    deadline = time.monotonic() + 60
    while [set(block_files(node.data)) for node in cluster.nodes] != committed:
        assert time.monotonic() < deadline, "the uploads were not collected"
        time.sleep(0.2)
    fresh = mount_factory("fresh")
    assert (fresh.path / "kept").read_bytes() == kept
    assert not (fresh.path / "big").exists() or (fresh.path / "big").stat().st_size == 0


# Writes 40 MiB and has the kernel write its cached pages to the mount (sync_file_range: no
# fsync, so the mount uploads the full chunks and commits nothing), then waits.
WRITE_AND_WAIT = """
import ctypes, os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
piece = os.urandom(1 << 20)
for _ in range(40):
    os.write(fd, piece)
libc = ctypes.CDLL(None, use_errno=True)
libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
assert libc.sync_file_range(fd, 0, 0, 7) == 0  # WAIT_BEFORE | WRITE | WAIT_AFTER
time.sleep(1)  # the uploads of the full chunks finish
print("written", flush=True)
time.sleep(600)
"""


def stored_bytes(node_data: Path) -> int:
    """The bytes of every block file of a node's store."""
    total = 0
    for path in list((node_data / "store" / "blocks").glob("*/*/*")):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


def test_a_deleted_gigabyte_gives_its_space_back_on_every_node(
    cluster: Cluster, mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    cluster.node_args = ("--gc-grace", "1")
    for node in cluster.nodes:
        cluster.stop(node)
    cluster.start(*cluster.nodes)
    mount = mount_factory()
    (mount.path / "small").write_bytes(os.urandom(5_000_000))
    repair_wait(cluster)  # its third copies too: the close returned once two were stored
    before = [stored_bytes(node.data) for node in cluster.nodes]
    source = tmp_path / "gigabyte"
    with open(source, "wb") as out:
        for _ in range(64):
            out.write(os.urandom(16 << 20))
    subprocess.run(["cp", str(source), str(mount.path / "big")], check=True)
    repair_wait(cluster)  # the trailing copies are all there
    after = [stored_bytes(node.data) for node in cluster.nodes]
    assert all(now - then >= 1 << 30 for now, then in zip(after, before, strict=True))
    (mount.path / "big").unlink()

    deadline = time.monotonic() + 60
    while (now := [stored_bytes(node.data) for node in cluster.nodes]) != before:
        assert time.monotonic() < deadline, f"the space did not come back: {now} != {before}"
        time.sleep(0.2)


def kept_for_clients(node_data: Path) -> int:
    """Rows a node's metadata keeps for clients: sessions, reserved inode numbers, held
    directories, orphans."""
    db = sqlite3.connect(f"file:{node_data / 'meta.db'}?mode=ro", uri=True)
    try:
        tables = ("clients", "sessions", "inode_ranges", "delegations", "orphans")
        return sum(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables)
    finally:
        db.close()


def test_a_killed_mount_leaves_nothing_behind(
    cluster: Cluster, mount_factory: Callable[..., Mount]
) -> None:
    """Its session, its held directories and the file it unlinked while open all go."""
    cluster.node_args = ("--mount-expiry", "2", "--gc-grace", "0.5")
    for node in cluster.nodes:
        cluster.stop(node)
    cluster.start(*cluster.nodes)
    mount = mount_factory()
    (mount.path / "dir").mkdir()  # held by the mount
    (mount.path / "dir" / "kept").write_bytes(os.urandom(1_000_000))
    committed = [set(block_files(node.data)) for node in cluster.nodes]
    (mount.path / "victim").write_bytes(os.urandom(3_000_000))
    still_open = os.open(mount.path / "victim", os.O_RDONLY)
    try:
        (mount.path / "victim").unlink()  # an orphan: open here, so not purged yet
        assert len(os.read(still_open, 10)) == 10
        assert all(len(block_files(node.data)) == 2 for node in cluster.nodes)
        deadline = time.monotonic() + 10  # the databases commit what they applied within 0.1 s
        while not all(kept_for_clients(node.data) > 0 for node in cluster.nodes):
            assert time.monotonic() < deadline, "the mount's session is not in the metadata"
            time.sleep(0.05)
        mount.process.kill()
        mount.process.wait()
    finally:
        with contextlib.suppress(OSError):  # ENOTCONN once the mount is dead
            os.close(still_open)
        mount.abort()

    deadline = time.monotonic() + 60
    while [set(block_files(node.data)) for node in cluster.nodes] != committed:
        assert time.monotonic() < deadline, "the orphan of the killed mount stayed"
        time.sleep(0.2)
    while any(kept_for_clients(node.data) for node in cluster.nodes):
        assert time.monotonic() < deadline, "the killed mount's session stayed"
        time.sleep(0.2)
    logs = "".join(cluster.log(node) for node in cluster.nodes)
    # The leader that ends the session reports it, unless it lost its leadership before it
    # learned the outcome (the ending committed all the same: the session is gone).
    assert (
        "ended the sessions of 1 mounts silent for 2s" in logs
        or "garbage collection round cut short: EINDOUBT" in logs
    )
    assert sorted(os.listdir(mount_factory("again").path / "dir")) == ["kept"]
