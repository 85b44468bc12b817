"""Start a long-running command in the background and return once it reports ready.

`ringfs up` and `ringfs mount` return only when the mount is in place (like mount(8)), yet the
filesystem keeps running after they exit. The parent re-runs the same command in the
foreground in a new session, hands it the write end of a pipe, and waits for one line:
`ready`, or `error: <reason>`. Output of the background process goes to a log file.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

READY = "ready"


class StartError(Exception):
    """The background process failed before it was ready; the message says why."""


def start(argv: list[str], log_path: Path, timeout: float = 60.0) -> int:
    """Run `ringfs <argv> --ready-fd N` detached; return its pid once it reported ready.

    Raises `StartError` with the child's reason (or the tail of its log) if it fails first.
    """
    read_end, write_end = os.pipe()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        child = subprocess.Popen(
            [sys.executable, "-m", "ringfs.tools", *argv, "--ready-fd", str(write_end)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            pass_fds=(write_end,),
            start_new_session=True,
        )
    os.close(write_end)
    with os.fdopen(read_end, "r") as reader:
        line = reader.readline().strip()
    if line == READY:
        return child.pid
    try:
        child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
    if line.startswith("error: "):
        raise StartError(line.removeprefix("error: "))
    raise StartError(f"exited before it was ready; see {log_path}:\n{_tail(log_path)}")


def report(ready_fd: int | None, message: str) -> None:
    """Tell the waiting parent (if any) how the start went; closes the pipe."""
    if ready_fd is None:
        return
    with contextlib.suppress(OSError):  # the parent gave up waiting: nobody to tell
        os.write(ready_fd, (message + "\n").encode())
        os.close(ready_fd)


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
