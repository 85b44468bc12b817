"""Finding a mount's backing device in /proc/self/mountinfo and setting its readahead window
(`ringfs.fs.kernel_readahead`), against files standing in for /proc and /sys."""

from __future__ import annotations

from pathlib import Path

import pytest

from ringfs.fs import kernel_readahead
from ringfs.fs.kernel_readahead import mount_device, set_readahead

MOUNTINFO = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
47 22 0:40 / /tmp/mnt rw,nosuid,nodev,relatime - fuse.ringfs ringfs rw,user_id=0
48 22 0:41 / /tmp/my\\040mount rw,nosuid,nodev - fuse.ringfs ringfs rw,user_id=0
49 22 0:42 / /tmp/back\\134slash rw,nosuid,nodev - fuse.ringfs ringfs rw,user_id=0
"""


def test_the_device_of_a_mount_is_found_by_its_path() -> None:
    assert mount_device(MOUNTINFO, "/tmp/mnt") == "0:40"
    assert mount_device(MOUNTINFO, "/") == "254:1"


def test_escaped_characters_in_mount_paths_are_read_back() -> None:
    assert mount_device(MOUNTINFO, "/tmp/my mount") == "0:41"
    assert mount_device(MOUNTINFO, "/tmp/back\\slash") == "0:42"
    assert mount_device(MOUNTINFO, "/tmp/my\\040mount") is None


def test_the_last_of_stacked_mounts_is_the_one_seen() -> None:
    stacked = MOUNTINFO + "50 47 0:43 / /tmp/mnt rw - fuse.ringfs ringfs rw\n"
    assert mount_device(stacked, "/tmp/mnt") == "0:43"


def test_a_path_nothing_is_mounted_on_has_no_device() -> None:
    assert mount_device(MOUNTINFO, "/tmp") is None
    assert mount_device(MOUNTINFO, "/tmp/mnt/sub") is None


def test_the_window_is_written_to_the_mounts_backing_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mountinfo, bdi = tmp_path / "mountinfo", tmp_path / "bdi"
    mountinfo.write_text(MOUNTINFO)
    (bdi / "0:40").mkdir(parents=True)
    (bdi / "0:40" / "read_ahead_kb").write_text("128\n")
    monkeypatch.setattr(kernel_readahead, "_MOUNTINFO", mountinfo)
    monkeypatch.setattr(kernel_readahead, "_BDI", bdi)
    assert set_readahead(Path("/tmp/mnt"), 1024)
    assert (bdi / "0:40" / "read_ahead_kb").read_text() == "1024\n"


def test_a_window_that_cannot_be_set_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO)
    monkeypatch.setattr(kernel_readahead, "_MOUNTINFO", mountinfo)
    monkeypatch.setattr(kernel_readahead, "_BDI", tmp_path / "no-bdi")
    assert not set_readahead(Path("/tmp/mnt"))  # the device's directory is missing
    assert not set_readahead(Path("/tmp/elsewhere"))  # nothing mounted there
