"""Small ext4 filesystems in files, loop-mounted by the test and always taken down after it.

A node whose data directory lives on one of these sees a real full disk: the kernel's own
ENOSPC, statvfs numbers that move as blocks land, and SQLite failing to grow its files. Needs
root, util-linux (`losetup`, `mount`) and e2fsprogs (`mkfs.ext4`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

TOOLS = ("losetup", "mkfs.ext4", "mount", "umount")


def unavailable_reason() -> str | None:
    """Why loop filesystems cannot be made here, or None."""
    if os.geteuid() != 0:
        return "loop-mounted filesystems need root"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install mount e2fsprogs)"
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices (/dev/loop-control is missing)"
    return None


def _run(*argv: str) -> str:
    result = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60)
    return result.stdout


@dataclass(frozen=True)
class Disk:
    """One mounted filesystem: its image file, loop device and mountpoint."""

    image: Path
    device: str
    path: Path

    def free(self) -> int:
        """Bytes an unprivileged writer may still use (what the node sees too)."""
        fs = os.statvfs(self.path)
        return fs.f_bavail * fs.f_frsize

    def fill(self, leave: int) -> None:
        """Take all free space but `leave` bytes with a filler file (other data on the disk)."""
        size = self.free() - leave
        assert size > 0, f"{self.path} has only {self.free()} bytes free"
        fd = os.open(self.path / "filler", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def disk(image: Path, path: Path, size: int) -> Iterator[Disk]:
    """A fresh ext4 of `size` bytes mounted at `path`; unmounted and detached on exit."""
    with ExitStack() as undo:
        with open(image, "wb") as file:
            file.truncate(size)
        undo.callback(image.unlink, missing_ok=True)
        # -m 0: no blocks kept for root, so free space is the same for every writer.
        _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
        device = _run("losetup", "--find", "--show", str(image)).strip()
        undo.callback(_run, "losetup", "--detach", device)
        path.mkdir(parents=True, exist_ok=True)
        _run("mount", "-t", "ext4", device, str(path))
        undo.callback(_unmount, path)
        yield Disk(image, device, path)


def _unmount(path: Path) -> None:
    """Unmount, waiting a little for processes that are still letting go; lazily at last."""
    for _ in range(50):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    _run("umount", "--lazy", str(path))
