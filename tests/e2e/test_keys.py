"""Client keys with real processes: mounts hold keys, and a revoked key's mount is cut off.

Three node processes, two `ringfs mount` processes with keys of their own, real `cp` and
`cat`. The second key is revoked with `ringfs key revoke`: its mount fails from then on while
the first mount and the nodes carry on, and what either wrote before stays, byte for byte.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, Mount, ringfs
from tests.e2e.test_cli import assert_one_line_error

pytestmark = pytest.mark.fuse


def test_a_revoked_key_cuts_its_mount_off_and_no_one_else(
    cluster: Cluster, mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    desk = mount_factory("desk").path  # with the key "mounts"
    laptop_key = cluster.key_file("laptop")
    assert laptop_key.stat().st_mode & 0o777 == 0o600
    laptop = mount_factory("laptop", args=("--key-file", str(laptop_key), "--meta-deadline", "3"))
    data = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "source").write_bytes(data)
    subprocess.run(["cp", str(tmp_path / "source"), str(laptop.path / "copied")], check=True)
    assert (desk / "copied").read_bytes() == data
    assert cluster.run("key", "list").split() == ["laptop", "mounts"]

    out = cluster.run("key", "revoke", "laptop")
    assert "key laptop revoked" in out
    assert "every node refuses it now and closed the connections it opened" in out
    assert cluster.run("key", "list").split() == ["mounts"]
    for action in (
        lambda: (laptop.path / "copied").read_bytes(),
        lambda: (laptop.path / "new").write_bytes(b"not any more"),
    ):
        with pytest.raises(OSError, match="Input/output error") as failed:
            action()
        assert failed.value.errno == errno.EIO
    assert "no key 'laptop' in force" in laptop.log()

    # The other mount, and the data the revoked one wrote, are untouched.
    assert (desk / "copied").read_bytes() == data
    shutil.copyfile(tmp_path / "source", desk / "after")
    assert (desk / "after").read_bytes() == data
    status = cluster.status()
    assert all(
        re.search(rf"^{n.name} +{n.address} +active ", status, re.M) for n in cluster.nodes
    ), status


def test_key_commands_refuse_mistakes_in_one_line(cluster: Cluster, tmp_path: Path) -> None:
    access = ("--cluster", cluster.seeds, "--secret-file", str(cluster.secret_file))
    key = cluster.key_file("k1")
    assert_one_line_error(
        ringfs("key", "add", "k1", "--out", str(tmp_path / "again.key"), *access),
        "key k1 exists: revoke it first",
    )
    assert_one_line_error(ringfs("key", "add", "k2", "--out", str(key), *access), "exists")
    assert_one_line_error(ringfs("key", "add", "no/slash", *access), "a key name is 1 to 64")
    assert_one_line_error(ringfs("key", "revoke", "k9", *access), "no key 'k9' in force")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    key.chmod(0o644)
    result = ringfs("mount", cluster.seeds, str(mountpoint), "--key-file", str(key))
    assert_one_line_error(result, "key file")
    assert_one_line_error(result, "is open to others (mode 0644)")
    key.chmod(0o600)
    bad = tmp_path / "bad.key"
    bad.write_text("ringfs-key k1\n")
    bad.chmod(0o600)
    result = ringfs("mount", cluster.seeds, str(mountpoint), "--key-file", str(bad))
    assert_one_line_error(result, "is not a ringfs key file")
    # A key is no cluster secret: the operators' commands refuse it at the nodes.
    result = ringfs("status", "--cluster", cluster.seeds, "--secret-file", str(key))
    assert_one_line_error(result, "authentication failed")
    assert not os.path.ismount(mountpoint)
