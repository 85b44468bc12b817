"""Finding a mount's backing device in /proc/self/mountinfo (`ringfs.fs.kernel_readahead`)."""

from __future__ import annotations

from ringfs.fs.kernel_readahead import mount_device

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
