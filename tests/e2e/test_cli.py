"""The `ringfs` command as a user meets it: `up` twice on the same data, help, and one-line
errors for the usual mistakes."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    Cluster,
    Up,
    alive,
    free_ports,
    processes_using,
    ringfs,
    ringfs_argv,
    wait_for,
    write_secret,
)
from tests.e2e.test_posix_perms import as_nobody

COMMANDS = [
    "up", "node", "mount", "status", "repair", "weight", "drain", "remove", "replace",
    "add-node", "bench", "latency", "tls-init", "key",
]  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("ringfs: ")]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0], result.stderr


@pytest.mark.fuse
def test_up_again_finds_the_same_files(up: Up, tmp_path: Path) -> None:
    up.start()
    payload = os.urandom(5 * 1024 * 1024 + 3)
    (up.mountpoint / "dir").mkdir()
    (up.mountpoint / "dir" / "file").write_bytes(payload)
    os.symlink("dir/file", up.mountpoint / "link")
    status = ringfs("status", "--data", str(up.data))
    assert status.returncode == 0, status.stderr
    assert status.stdout.count(" active ") == 3
    up.stop()
    assert not os.path.ismount(up.mountpoint)
    assert os.listdir(up.mountpoint) == []

    up.start()
    assert (up.mountpoint / "dir" / "file").read_bytes() == payload
    assert os.readlink(up.mountpoint / "link") == "dir/file"
    up.stop()


@pytest.mark.fuse
def test_up_starts_as_many_nodes_as_asked_and_keeps_them(up: Up) -> None:
    up.start("--nodes", "5")
    payload = os.urandom(3 * 1024 * 1024)
    (up.mountpoint / "file").write_bytes(payload)
    status = ringfs("status", "--data", str(up.data))
    assert status.returncode == 0, status.stderr
    assert status.stdout.count(" active ") == 5
    roles = re.findall(r"\smeta (?:leader|follower)$", status.stdout, re.MULTILINE)
    assert len(roles) == 3  # a meta group of three among the five
    up.stop()
    assert not processes_using(up.data)
    assert_private(up.data)  # the secret, the log, every node's directory

    refused = ringfs("up", str(up.mountpoint), "--data", str(up.data), "--nodes", "3")
    assert_one_line_error(refused, "holds a cluster of 5 nodes, not 3")
    up.start()  # as many as it holds
    assert (up.mountpoint / "file").read_bytes() == payload
    assert ringfs("status", "--data", str(up.data)).stdout.count(" active ") == 5
    up.stop()


@pytest.mark.fuse
def test_up_as_root_lets_other_users_in(up: Up, nobody: list[str]) -> None:
    """As root, `ringfs up` mounts with allow_other; the kernel still applies the modes."""
    up.start()
    (up.mountpoint / "shared").write_text("for everyone")
    (up.mountpoint / "private").mkdir(mode=0o700)
    ops = [["read", "shared"], ["listdir", "private"], ["create", "mine"]]
    assert as_nobody(nobody, up.mountpoint, ops) == [
        ("ok", "for everyone"),
        ("err", "EACCES"),
        ("err", "EACCES"),
    ]
    up.stop()


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command: str) -> None:
    result = ringfs(command, "--help")
    assert result.returncode == 0
    assert "usage: ringfs" in result.stdout


def test_missing_mountpoint(tmp_path: Path) -> None:
    result = ringfs("up", str(tmp_path / "nowhere"), "--data", str(tmp_path / "data"))
    assert_one_line_error(result, "does not exist")


def test_port_in_use(tmp_path: Path) -> None:
    write_secret(tmp_path / "secret")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = ringfs(
            "node",
            "--name",
            "n1",
            "--data",
            str(tmp_path / "n1"),
            "--listen",
            f"127.0.0.1:{port}",
            "--cluster",
            f"n1=127.0.0.1:{port}",
            "--secret-file",
            str(tmp_path / "secret"),
        )
    assert_one_line_error(result, "address already in use")


def test_unreachable_cluster(tmp_path: Path) -> None:
    write_secret(tmp_path / "secret")
    (tmp_path / "mnt").mkdir()
    port = free_ports(1)[0]
    result = ringfs(
        "status", "--cluster", f"127.0.0.1:{port}", "--secret-file", str(tmp_path / "secret")
    )
    assert_one_line_error(result, "cannot reach the cluster")
    result = ringfs(
        "mount",
        f"127.0.0.1:{port}",
        str(tmp_path / "mnt"),
        "--secret-file",
        str(tmp_path / "secret"),
    )
    assert_one_line_error(result, "cannot reach the cluster")


def test_wrong_secret(cluster: Cluster, tmp_path: Path) -> None:
    wrong = write_secret(tmp_path / "wrong")
    (tmp_path / "mnt").mkdir()
    result = ringfs("status", "--cluster", cluster.seeds, "--secret-file", str(wrong))
    assert_one_line_error(result, "authentication failed")
    result = ringfs("mount", cluster.seeds, str(tmp_path / "mnt"), "--secret-file", str(wrong))
    assert_one_line_error(result, "authentication failed")
    assert not os.path.ismount(tmp_path / "mnt")


def test_a_secret_file_open_to_others_or_too_short_is_refused(tmp_path: Path) -> None:
    secret = write_secret(tmp_path / "secret")
    access = ["--cluster", "127.0.0.1:1", "--secret-file", str(secret)]
    for mode in (0o640, 0o604, 0o620):
        secret.chmod(mode)
        assert_one_line_error(ringfs("status", *access), f"is open to others (mode 0{mode:o})")
    secret.chmod(0o600)
    secret.write_text("0123456789abcdef0123456789abcde\n")  # 31 hex digits: 124 bits
    assert_one_line_error(ringfs("status", *access), "holds about 124 bits, fewer than 128")
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    assert_one_line_error(ringfs("status", *access), "cannot reach the cluster")


def assert_private(root: Path) -> None:
    """`root` is open to its owner only, and so is everything in it."""
    assert root.stat().st_mode & 0o777 == 0o700, root
    for path in root.rglob("*"):
        if not path.is_symlink():
            assert path.stat().st_mode & 0o077 == 0, f"{path}: {path.stat().st_mode:o}"


@pytest.mark.fuse
def test_data_directories_and_their_files_are_private(cluster: Cluster, mounted: Path) -> None:
    (mounted / "file").write_bytes(b"x" * 100_000)
    (mounted / "file").chmod(0o644)
    for node in cluster.nodes:
        assert_private(node.data)


def test_missing_secret_file(tmp_path: Path) -> None:
    result = ringfs("status", "--cluster", "127.0.0.1:1", "--secret-file", str(tmp_path / "nope"))
    assert_one_line_error(result, "cannot read secret file")


def test_node_configuration_errors_are_one_line(tmp_path: Path) -> None:
    write_secret(tmp_path / "secret")
    port = free_ports(1)[0]
    common = ["--listen", f"127.0.0.1:{port}", "--secret-file", str(tmp_path / "secret")]
    result = ringfs("node", "--name", "n1", "--data", str(tmp_path / "n1"), *common)
    assert_one_line_error(result, "holds no cluster map")
    result = ringfs(
        "node",
        "--name",
        "n9",
        "--data",
        str(tmp_path / "n9"),
        *common,
        "--cluster",
        f"n1=127.0.0.1:{port}",
    )
    assert_one_line_error(result, "not a member")
    result = ringfs(
        "node",
        "--name",
        "n1",
        "--data",
        str(tmp_path / "n1"),
        *common,
        "--cluster",
        f"n1=127.0.0.1:{port}",
        "--chunk-size",
        "64M",
    )
    assert_one_line_error(result, "chunk size must be between")


def test_two_nodes_cannot_share_a_data_directory(cluster: Cluster) -> None:
    node = cluster.nodes[0]
    port = free_ports(1)[0]
    result = ringfs(
        "node",
        "--name",
        node.name,
        "--data",
        str(node.data),
        "--listen",
        f"127.0.0.1:{port}",
        "--secret-file",
        str(cluster.secret_file),
    )
    assert_one_line_error(result, "is in use by another node")


def test_a_node_started_with_other_members_stops_with_one_line(
    cluster: Cluster, tmp_path: Path
) -> None:
    """It would otherwise form a second cluster, with a placement and a meta group of its own."""
    n1, n2 = cluster.nodes[0], cluster.nodes[1]
    address = f"127.0.0.1:{free_ports(1)[0]}"
    result = ringfs(
        "node", "--name", "x", "--data", str(tmp_path / "x"), "--listen", address,
        "--secret-file", str(cluster.secret_file),
        "--cluster", f"n1={n1.address},n2={n2.address},x={address}",
    )  # fmt: skip
    assert_one_line_error(
        result, "this node was started with members n1, n2, x, but the cluster agreed on n1, n2, n3"
    )
    first = cluster.status().splitlines()[0]  # the cluster goes on, named by its id
    assert re.match(r"cluster [0-9a-f]{16}, map epoch 1, 3 nodes", first), first


def test_weight_changes_the_map_every_node_goes_by(cluster: Cluster) -> None:
    access = ["--cluster", cluster.seeds, "--secret-file", str(cluster.secret_file)]
    result = ringfs("weight", "n2", "2.5", *access)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "cluster map epoch 2: n2 has weight 2.5\n"

    def kept() -> list[tuple[int, float]]:
        maps = [json.loads((node.data / "cluster.json").read_text()) for node in cluster.nodes]
        return [
            (m["epoch"], next(n["weight"] for n in m["nodes"] if n["id"] == "n2")) for m in maps
        ]

    wait_for(lambda: kept() == [(2, 2.5)] * 3, "every node to go by the new map", timeout=20)
    assert re.match(r"cluster [0-9a-f]{16}, map epoch 2,", cluster.status())
    assert_one_line_error(ringfs("weight", "n9", "2", *access), "no node 'n9' in the cluster map")
    assert_one_line_error(ringfs("weight", "n2", "0", *access), "a weight is a number above 0")
    # Three nodes hold three copies: none can be drained.
    assert_one_line_error(ringfs("drain", "n1", *access), "would leave 2 nodes for 3 copies")


def test_a_storage_node_never_loads_the_fuse_client() -> None:
    code = "import sys, ringfs.tools._cli, ringfs.tools.serve; print('pyfuse3' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


@pytest.mark.fuse
def test_mount_returns_once_mounted_and_unmounts_cleanly(
    fuse: None, cluster: Cluster, tmp_path: Path
) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}  # where the mount's log goes
    try:
        result = subprocess.run(
            ringfs_argv("mount", cluster.seeds, str(mountpoint), "--secret-file",
                        str(cluster.secret_file), "-o", "allow_other"),
            capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(mountpoint)
        (mountpoint / "hello").write_text("hello")
        assert (mountpoint / "hello").read_text() == "hello"
        pids = processes_using(mountpoint)
        assert pids, "no process serves the mount"
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=True)
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in pids):
            assert time.monotonic() < deadline, "the mount process did not exit after unmount"
            time.sleep(0.1)
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], check=False)
        for pid in processes_using(mountpoint):
            os.kill(pid, 9)


@pytest.mark.fuse
def test_latency_times_each_layer(mounted: Path, cluster: Cluster) -> None:
    result = subprocess.run(
        ringfs_argv(
            "latency", str(mounted), "--cluster", cluster.seeds,
            "--secret-file", str(cluster.secret_file), "--rounds", "3",
        ),
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    assert [line.split("  median")[0].strip() for line in lines] == [
        "mount: getxattr answered by the mount alone",
        "mount: lstat of a missing name (lookup)",
        "mount: create + write 4 KiB + close",
        "mount: rename",
        "mount: unlink",
        "direct: 4 KiB block to a write quorum",
        "direct: metadata query (GetAttr)",
        "direct: metadata command (Setattr)",
    ]
    assert all(float(line.split()[-5]) > 0 for line in lines)
    assert os.listdir(mounted) == []  # its work directory is gone
