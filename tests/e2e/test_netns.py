"""The test hosts themselves: what runs on one leaves the mounts of this host alone, so tests
with hosts can run beside tests that mount."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e import netns
from tests.e2e.conftest import Mount, wait_for

pytestmark = pytest.mark.fuse

HOSTS = 1


def test_a_process_on_a_host_keeps_no_mount_of_this_one_serving(
    hosts: list[netns.Host], mount_factory: Callable[..., Mount]
) -> None:
    """A mount made before a process starts on a host ends at its `fusermount3 -u`, while
    that process still runs (a copy of the mount in the process's namespace would keep it
    serving until the process ends)."""
    mount = mount_factory()
    resident = subprocess.Popen([*hosts[0].prefix, "sleep", "120"])
    try:
        comm = Path(f"/proc/{resident.pid}/comm")
        wait_for(lambda: comm.read_text() == "sleep\n", "the process to run on the host")
        status = mount.unmount()
        assert resident.poll() is None
    finally:
        resident.kill()
        resident.wait()
    assert status == 0
