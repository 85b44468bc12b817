"""The embedded default: a local cluster on loopback, mounted, in one command.

`ringfs up MOUNTPOINT` starts three `ringfs node` processes (`--nodes N` for more; data under
the user's data directory, or `--data`), mounts them, and stays in the background until the
filesystem is unmounted with `fusermount3 -u`; then it stops the nodes. Run again on the same
data, it finds the same files: nodes are named n1, n2, ... and the ring places by name, so new
ports on the next run change nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ringfs.tools.background import StartError

HOST = "127.0.0.1"
#: Nodes `ringfs up` starts on a new data directory.
NODE_COUNT = 3
STATE_FILE = "up.json"
SECRET_FILE = "secret"
# How long a node may take to open its store and bind its port.
NODE_START_TIMEOUT = 30.0
NODE_STOP_TIMEOUT = 15.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class LocalCluster:
    """Where an embedded cluster keeps its data, and how its nodes are reached."""

    data_dir: Path

    @property
    def secret_file(self) -> Path:
        return self.data_dir / SECRET_FILE

    @property
    def state_file(self) -> Path:
        return self.data_dir / STATE_FILE

    @property
    def log_file(self) -> Path:
        return self.data_dir / "ringfs.log"

    def node_count(self, asked: int | None) -> int:
        """How many nodes to start: as many as the data directory holds (a cluster's members
        are fixed when it is founded), `asked` or `NODE_COUNT` for a new one.

        Raises `StartError` when `asked` is not what the data directory holds."""
        held = sum(1 for path in self.data_dir.glob("n*/cluster.json") if path.is_file())
        if held and asked not in (None, held):
            raise StartError(
                f"{self.data_dir} holds a cluster of {held} nodes, not {asked}: a cluster's "
                "members are fixed when it is first started"
            )
        return held or asked or NODE_COUNT

    def members(self) -> str | None:
        """The `--cluster` spec of the last run, if any (for `ringfs status`)."""
        try:
            return str(json.loads(self.state_file.read_text())["members"])
        except (OSError, ValueError, KeyError):
            return None


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ringfs"


def ensure_secret(path: Path) -> bytes:
    """The cluster secret stored at `path`, created (readable by the owner only) if missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
    return read_secret(path)


def read_secret(path: Path) -> bytes:
    """Read a secret file; raises ValueError naming the file if it is missing or empty."""
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from exc
    if not secret:
        raise ValueError(f"secret file {path} is empty")
    return secret


def free_ports(count: int) -> list[int]:
    """Loopback ports nobody listens on right now (bound, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the supervisor dies, so no node outlives its cluster."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.contextmanager
def running_nodes(cluster: LocalCluster, count: int, debug: bool = False) -> Iterator[str]:
    """Start `count` local nodes, yield the `--cluster` spec once all listen, stop them after.

    Raises `StartError` if a node fails to start (its log says why).
    """
    spec = node_spec(count)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for name in spec_names(spec):
            processes.append(start_node(cluster, name, spec, debug=debug))
        for name, process in zip(spec_names(spec), processes, strict=True):
            _wait_ready(name, process)
        cluster.state_file.write_text(json.dumps({"members": spec, "pid": os.getpid()}))
        yield spec
    finally:
        stop_nodes(processes)


def node_spec(count: int) -> str:
    """The `--cluster` spec of `count` local nodes n1, n2, ... on free loopback ports."""
    ports = free_ports(count)
    return ",".join(f"n{i + 1}={HOST}:{port}" for i, port in enumerate(ports))


def spec_names(spec: str) -> list[str]:
    return [member.split("=")[0] for member in spec.split(",")]


def start_node(
    cluster: LocalCluster,
    name: str,
    spec: str,
    options: tuple[str, ...] = (),
    debug: bool = False,
    log: Path | None = None,
    wait: bool = False,
) -> subprocess.Popen[bytes]:
    """Start node `name` of `spec` as a child that dies with this process, its messages going
    to `log` (default: where this process's go). With `wait`, return once it listens (raises
    `StartError` if it fails)."""
    address = dict(member.split("=") for member in spec.split(","))[name]
    argv = [sys.executable, "-m", "ringfs.tools", *(["--debug"] if debug else []),
            "node", "--name", name, "--data", str(cluster.data_dir / name),
            "--listen", address, "--cluster", spec,
            "--secret-file", str(cluster.secret_file), *options]  # fmt: skip
    with contextlib.ExitStack() as stack:
        stderr = None if log is None else stack.enter_context(open(log, "ab"))
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            preexec_fn=_die_with_parent,
        )
    if wait:
        _wait_ready(name, process)
    return process


def _wait_ready(name: str, process: subprocess.Popen[bytes]) -> None:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], NODE_START_TIMEOUT)
    line = process.stdout.readline().decode(errors="replace") if ready else ""
    if not line.startswith("ready"):
        raise StartError(
            f"node {name} did not start (exit status {process.poll()}); "
            "see the log in the data directory"
        )


def stop_nodes(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM, and wait for each (SIGKILL after 15 s)."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=NODE_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
