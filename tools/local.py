"""The embedded default: a local cluster on loopback, mounted, in one command.

`ringfs up MOUNTPOINT` starts three `ringfs node` processes (`--nodes N` for more; data under
the user's data directory, or `--data`), mounts them, and stays in the background until the
filesystem is unmounted with `fusermount3 -u`; then it stops the nodes. Run again on the same
data, it finds the same files: nodes are named n1, n2, ... and the ring places by name, so new
ports on the next run change nothing. `ringfs add-node` has it start one more node, which joins
the running cluster (SIGUSR1 asks for it; the state file tells when it is in).
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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ringfs.node.cluster.map import MAP_FILE, ClusterMap
from ringfs.node.errors import NodeError
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

    def node_names(self, asked: int | None) -> list[str]:
        """The nodes to start: those the data directory holds (but removed ones), or for a
        new one `asked` or `NODE_COUNT` nodes n1, n2, ...

        Raises `StartError` when `asked` is not what the data directory holds."""
        held = [
            name for name in self._held() if not _removed(self.data_dir / name / MAP_FILE, name)
        ]
        if held and asked not in (None, len(held)):
            raise StartError(
                f"{self.data_dir} holds a cluster of {len(held)} nodes, not {asked}: "
                "add one to a running cluster with `ringfs add-node`"
            )
        return held or [f"n{i + 1}" for i in range(asked or NODE_COUNT)]

    def next_name(self) -> str:
        """The name for one more node: past every name used, so a removed one is not reused."""
        return f"n{max((_index(name) for name in self._held()), default=0) + 1}"

    def _held(self) -> list[str]:
        names = [path.parent.name for path in self.data_dir.glob("n*/" + MAP_FILE)]
        return sorted((name for name in names if _index(name) > 0), key=_index)

    def members(self) -> str | None:
        """The `--cluster` spec of the running (or last) run, if any (for `ringfs status`)."""
        state = self.state()
        return None if state is None else str(state.get("members"))

    def state(self) -> dict[str, Any] | None:
        """What the supervisor of `ringfs up` wrote: its pid, the members' spec, and how the
        last `add-node` went."""
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) else None

    def write_state(self, **fields: Any) -> None:
        state = {**(self.state() or {}), **fields}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_file)


def _index(name: str) -> int:
    digits = name[1:]
    return int(digits) if name.startswith("n") and digits.isdigit() else 0


def _removed(path: Path, name: str) -> bool:
    try:
        return ClusterMap.load(path).node(name).state == "removed"
    except (OSError, NodeError, KeyError):
        return False


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ringfs"


#: The bits a cluster secret must hold at least.
SECRET_BITS = 128
_HEX = frozenset(b"0123456789abcdefABCDEF")
_BASE64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_")


def keep_private() -> None:
    """Have every file and directory this process creates readable by its owner only: data
    directories hold the blocks and metadata of every file, whatever the files' own modes."""
    os.umask(0o077)


def ensure_secret(path: Path) -> bytes:
    """The cluster secret stored at `path`, created (readable by the owner only) if missing."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
    return read_secret(path)


def read_secret(path: Path) -> bytes:
    """Read a secret file; raises ValueError naming the file if it cannot be read, is not
    private (like ssh, any access for its group or others is refused) or is too short."""
    secret = _read_private(path, "secret file").strip()
    if secret_bits(secret) < SECRET_BITS:
        raise ValueError(
            f"secret file {path} holds about {secret_bits(secret)} bits, fewer than "
            f"{SECRET_BITS}: write a longer one, e.g. openssl rand -hex 32 > {path}"
        )
    return secret


#: The first word of a key file: "ringfs-key NAME SECRET-IN-HEX".
KEY_FILE_TAG = "ringfs-key"


def write_key_file(path: Path, name: str, secret: bytes) -> None:
    """Write a client key where only its owner can read it; refuses to replace a file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"{KEY_FILE_TAG} {name} {secret.hex()}\n")


def read_key_file(path: Path) -> tuple[str, bytes]:
    """The name and secret of a key file (`write_key_file`); raises ValueError naming the
    file if it cannot be read, is not private, or is not a key."""
    words = _read_private(path, "key file").decode(errors="replace").split()
    try:
        tag, name, secret = words
        if tag != KEY_FILE_TAG:
            raise ValueError
        return name, bytes.fromhex(secret)
    except ValueError:
        raise ValueError(
            f"{path} is not a ringfs key file (one line: {KEY_FILE_TAG} NAME SECRET, as "
            "`ringfs key add` writes)"
        ) from None


def _read_private(path: Path, what: str) -> bytes:
    """The bytes of a file that only its owner may read (like ssh, any access for its group
    or others is refused); ValueError naming it otherwise."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from exc
    if mode & 0o077:
        raise ValueError(
            f"{what} {path} is open to others (mode {mode & 0o777:04o}): "
            f"make it private with chmod 600 {path}"
        )
    return data


def secret_bits(secret: bytes) -> int:
    """What a secret can hold at most: 4 bits a character if it is all hex digits, 6 if it is
    all base64, else 8 a byte."""
    if set(secret) <= _HEX:
        return 4 * len(secret)
    if set(secret) <= _BASE64:
        return 6 * len(secret)
    return 8 * len(secret)


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
    """In the child: get SIGTERM if the supervisor dies, so no node outlives its cluster.
    (The kernel sends it when the thread that started the child ends, not the process.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class LocalNodes:
    """The node processes of a running `ringfs up`, which `start_next` adds to."""

    def __init__(self, cluster: LocalCluster, debug: bool) -> None:
        self.cluster = cluster
        self.debug = debug
        self.spec = ""
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, names: list[str]) -> None:
        """Start the nodes `names` and wait until they all listen."""
        self.spec = node_spec(names)
        for name in names:
            self.processes.append(start_node(self.cluster, name, self.spec, debug=self.debug))
        for name, process in zip(names, self.processes, strict=True):
            _wait_ready(name, process)
        self.cluster.write_state(members=self.spec, pid=os.getpid(), added=None)

    def start_next(self) -> Joining:
        """Start one more node that joins the cluster. Call it from the main thread: a node
        gets SIGTERM when the thread that started it ends (see `_die_with_parent`)."""
        name = self.cluster.next_name()
        [port] = free_ports(1)
        entry = f"{name}={HOST}:{port}"
        seeds = ",".join(member.split("=")[1] for member in self.spec.split(","))
        process = start_node(self.cluster, name, entry, ("--join", seeds), self.debug)
        self.processes.append(process)
        return Joining(name, entry, process)

    def wait_joined(self, joining: Joining) -> None:
        """Wait until the node `start_next` started listens; the state file says how it went."""
        try:
            _wait_ready(joining.name, joining.process)
        except StartError as exc:
            self.cluster.write_state(added={"name": joining.name, "error": str(exc)})
            return
        self.spec = f"{self.spec},{joining.entry}"
        self.cluster.write_state(members=self.spec, added={"name": joining.name, "error": None})


@dataclass(frozen=True)
class Joining:
    """A node on its way in: its name, its `--cluster` entry, its process."""

    name: str
    entry: str
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def running_nodes(
    cluster: LocalCluster, names: list[str], debug: bool = False
) -> Iterator[LocalNodes]:
    """Start the local nodes `names`, yield them once all listen, stop them (and those added
    since) after.

    Raises `StartError` if a node fails to start (its log says why).
    """
    nodes = LocalNodes(cluster, debug)
    try:
        nodes.start(names)
        yield nodes
    finally:
        stop_nodes(nodes.processes)


def add_local_node(cluster: LocalCluster, timeout: float = 2 * NODE_START_TIMEOUT) -> str:
    """Have the running `ringfs up` on `cluster` start one more node; its name once it joined.

    Raises `StartError` when none runs there or the node did not start."""
    state = cluster.state()
    pid = state.get("pid") if state is not None else None
    if not isinstance(pid, int) or not _alive(pid):
        raise StartError(f"no `ringfs up` runs on {cluster.data_dir}")
    name = cluster.next_name()
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        added = (cluster.state() or {}).get("added")
        if isinstance(added, dict) and added.get("name") == name:
            if added.get("error"):
                raise StartError(str(added["error"]))
            return name
        time.sleep(0.2)
    raise StartError(f"node {name} did not start within {timeout:.0f} s; see {cluster.log_file}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def node_spec(names: list[str]) -> str:
    """The `--cluster` spec of the local nodes `names` on free loopback ports."""
    ports = free_ports(len(names))
    return ",".join(f"{name}={HOST}:{port}" for name, port in zip(names, ports, strict=True))


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
    # A node given --join is told where to join instead of all members.
    members = [] if "--join" in options else ["--cluster", spec]
    argv = [sys.executable, "-m", "ringfs.tools", *(["--debug"] if debug else []),
            "node", "--name", name, "--data", str(cluster.data_dir / name),
            "--listen", address, *members,
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
