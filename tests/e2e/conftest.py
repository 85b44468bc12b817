"""Real node processes and a real FUSE mount, started per test and always stopped.

`nodes` starts a 3-node cluster as `ringfs node` subprocesses on free loopback ports;
`mounted` mounts it with `ringfs mount -f` and yields the mountpoint. Teardown unmounts with
`fusermount3 -u` and checks that every process exits 0; if a test failed half-way, it falls
back to a lazy unmount, then terminate, then kill, so nothing is left behind.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_ports
from tests.e2e import netns

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
#: The port of every node of `hosted_cluster`: each is alone on its host, so a fixed port
#: collides with nothing.
HOSTED_PORT = 7070
STOP_TIMEOUT = 20.0

pytestmark = pytest.mark.fuse


def fuse_available() -> str | None:
    """Why FUSE tests cannot run here, or None if they can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (apt-get install fuse3)"
    return None


def ringfs_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "ringfs.tools", *args]


def write_secret(path: Path) -> Path:
    """A new cluster secret at `path`, as an operator makes one: private and long enough."""
    path.write_text(secrets.token_hex(32) + "\n")
    path.chmod(0o600)
    return path


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 40) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@dataclass
class NodeProcess:
    name: str
    port: int
    data: Path
    process: subprocess.Popen[bytes] | None = None
    host: str = HOST
    # Run the node through this (a test host's `netns.Host.prefix`) to put it on that host.
    prefix: tuple[str, ...] = ()
    # More `ringfs node` options for this node alone (e.g. its own --metrics address).
    args: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class Cluster:
    """A cluster of node subprocesses the test can kill and restart."""

    root: Path
    secret_file: Path
    nodes: list[NodeProcess] = field(default_factory=list)
    # More `ringfs node` options for every node (e.g. a small --snapshot-every).
    node_args: tuple[str, ...] = ()
    # More options for the commands `run` runs (e.g. TLS files).
    tool_args: tuple[str, ...] = ()

    @property
    def spec(self) -> str:
        return ",".join(f"{n.name}={n.address}" for n in self.nodes)

    @property
    def seeds(self) -> str:
        return ",".join(n.address for n in self.nodes)

    def node(self, name: str) -> NodeProcess:
        return next(n for n in self.nodes if n.name == name)

    def start(self, *nodes: NodeProcess) -> None:
        """Start `nodes` side by side, and return once each says it is ready."""
        for node in nodes:
            self._launch(node)
        for node in nodes:
            assert node.process is not None
            assert node.process.stdout is not None
            ready, _, _ = select.select([node.process.stdout], [], [], START_TIMEOUT)
            line = node.process.stdout.readline().decode() if ready else ""
            assert line.startswith("ready"), f"node {node.name} did not start: {self.log(node)}"

    def _launch(self, node: NodeProcess) -> None:
        log = open(self.root / f"{node.name}.log", "ab")  # noqa: SIM115 - closed with the process
        node.process = subprocess.Popen(
            [
                *node.prefix,
                *ringfs_argv(
                    "node",
                    "--name",
                    node.name,
                    "--data",
                    str(node.data),
                    "--listen",
                    node.address,
                    "--cluster",
                    self.spec,
                    "--secret-file",
                    str(self.secret_file),
                    *self.node_args,
                    *node.args,
                ),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        log.close()

    def kill(self, node: NodeProcess) -> None:
        """SIGKILL, as a crash would."""
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait()
        self._close(node)

    def stop(self, node: NodeProcess) -> int | None:
        """SIGTERM and wait; returns the exit status (None if it had to be killed)."""
        process = node.process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
        try:
            status: int | None = process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            status = None
        self._close(node)
        return status

    def _close(self, node: NodeProcess) -> None:
        if node.process is not None and node.process.stdout is not None:
            node.process.stdout.close()
        node.process = None

    def status(self, *options: str) -> str:
        """What `ringfs status` (with `options`) prints for this cluster."""
        return self.run("status", *options)

    def run(self, *command: str) -> str:
        """What `ringfs COMMAND...` prints, run with the cluster secret on this cluster."""
        access = ("--cluster", self.seeds, "--secret-file", str(self.secret_file))
        result = subprocess.run(
            ringfs_argv(*command, *access, *self.tool_args),
            check=True, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return result.stdout

    def key_file(self, name: str = "mounts") -> Path:
        """A client key of this cluster (`ringfs key add NAME`), issued on first use."""
        path = self.root / f"{name}.key"
        if not path.exists():
            self.run("key", "add", name, "--out", str(path))
        return path

    def log(self, node: NodeProcess) -> str:
        return (self.root / f"{node.name}.log").read_text(errors="replace")[-3000:]


@pytest.fixture
def fuse() -> None:
    reason = fuse_available()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    secret_file = write_secret(tmp_path / "secret")
    ports = free_ports(3)
    result = Cluster(
        tmp_path,
        secret_file,
        [NodeProcess(f"n{i + 1}", port, tmp_path / f"n{i + 1}") for i, port in enumerate(ports)],
    )
    try:
        result.start(*result.nodes)
        yield result
    finally:
        statuses = {node.name: result.stop(node) for node in result.nodes if node.process}
    assert all(status == 0 for status in statuses.values()), f"node exit statuses: {statuses}"


class Mount:
    """A `ringfs mount -f` process and its mountpoint."""

    def __init__(
        self, cluster: Cluster, path: Path, options: tuple[str, ...], args: tuple[str, ...] = ()
    ) -> None:
        self.cluster = cluster
        self.path = path
        self.log_path = cluster.root / f"mount-{path.name}.log"
        path.mkdir(exist_ok=True)
        # Mounts are clients: they hold a key, not the nodes' secret.
        argv = ringfs_argv(
            "mount", cluster.seeds, str(path), "--key-file", str(cluster.key_file()), "-f"
        )
        for option in options:
            argv += ["-o", option]
        argv += args
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.ismount(path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.abort()
                raise AssertionError(f"mount did not come up: {self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def unmount(self) -> int | None:
        """fusermount3 -u, then wait for the mount process; returns its exit status."""
        subprocess.run(["fusermount3", "-u", str(self.path)], check=False, capture_output=True)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.abort()
            return None

    def abort(self) -> None:
        """Lazy unmount, terminate, kill: leave nothing behind whatever state we are in."""
        if is_mounted(self.path):
            subprocess.run(["fusermount3", "-uz", str(self.path)], check=False, capture_output=True)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def is_mounted(path: Path) -> bool:
    """Whether something is mounted on `path`, also a FUSE mount whose process died (whose
    stat fails, so `os.path.ismount` says no)."""
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == str(path) for line in mounts)


@pytest.fixture
def mount_factory(fuse: None, cluster: Cluster, tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    """Mount the cluster (again) at a new path; every mount is undone at teardown."""
    mounts: list[Mount] = []

    def make(
        name: str = "mnt",
        options: tuple[str, ...] = ("allow_other",),
        args: tuple[str, ...] = (),
    ) -> Mount:
        """`args`: more `ringfs mount` options (e.g. a short --meta-deadline)."""
        mount = Mount(cluster, tmp_path / name, options, args)
        mounts.append(mount)
        return mount

    try:
        yield make
    finally:
        statuses = []
        for mount in mounts:
            if mount.process.poll() is None or is_mounted(mount.path):
                statuses.append((mount.path.name, mount.unmount(), mount.log()))
    bad = [(name, status, log) for name, status, log in statuses if status != 0]
    assert not bad, f"mount processes did not exit cleanly: {bad}"


@pytest.fixture
def hosts(request: pytest.FixtureRequest) -> Iterator[list[netns.Host]]:
    """A host (network namespace) for each node of a test module's `HOSTS` (default 3),
    removed after the test."""
    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with netns.hosts(getattr(request.module, "HOSTS", 3)) as made:
        yield made


@pytest.fixture
def hosted_cluster(hosts: list[netns.Host], tmp_path: Path) -> Iterator[Cluster]:
    """A node on each of `hosts` (all on port `HOSTED_PORT`), started, and stopped after.
    A module whose tests need it for mounts overrides `cluster` with it."""
    secret_file = write_secret(tmp_path / "secret")
    cluster = Cluster(tmp_path, secret_file, [
        NodeProcess(f"n{i + 1}", HOSTED_PORT, tmp_path / f"n{i + 1}", host=host.address,
                    prefix=host.prefix)
        for i, host in enumerate(hosts)
    ])  # fmt: skip
    try:
        cluster.start(*cluster.nodes)
        yield cluster
    finally:
        for node in cluster.nodes:
            cluster.stop(node)


@pytest.fixture
def mounted(mount_factory: Callable[..., Mount]) -> Path:
    """The path of a fresh mount of a fresh 3-node cluster."""
    return mount_factory().path


# -- other users -------------------------------------------------------------------------------

NOBODY = 65534


def drop_to_nobody() -> list[str] | None:
    """The command prefix that runs a program as nobody, or None if there is none here."""
    if shutil.which("setpriv"):
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    if shutil.which("runuser"):
        return ["runuser", "-u", "nobody", "--"]
    return None


def child_python() -> str:
    # The test's interpreter may live under a directory nobody cannot enter (e.g. /root).
    return shutil.which("python3", path="/usr/bin:/bin:/usr/local/bin") or sys.executable


@pytest.fixture
def nobody() -> list[str]:
    prefix = drop_to_nobody()
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to nobody")
    if prefix is None:
        pytest.skip("neither setpriv nor runuser is installed")
    probe = subprocess.run(
        [*prefix, child_python(), "-I", "-S", "-c", "import os; print(os.getuid())"],
        cwd="/",
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0 or probe.stdout.strip() != str(NOBODY):
        pytest.skip(f"cannot run a program as nobody: {probe.stderr.strip()[-300:]}")
    return prefix


# -- `ringfs` commands and `ringfs up` --------------------------------------------------------


def ringfs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ringfs_argv(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def processes_using(path: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(path).encode() in cmdline:
                found.append(int(entry.name))
    return found


class Up:
    """`ringfs up` on one data directory; makes sure it is down again at the end."""

    def __init__(self, data: Path, mountpoint: Path) -> None:
        self.data = data
        self.mountpoint = mountpoint

    def start(self, *options: str) -> None:
        result = ringfs("up", str(self.mountpoint), "--data", str(self.data), *options)
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(self.mountpoint)

    def stop(self) -> None:
        pid = json.loads((self.data / "up.json").read_text())["pid"]
        subprocess.run(["fusermount3", "-u", str(self.mountpoint)], check=True)
        deadline = time.monotonic() + 30
        while alive(pid) or processes_using(self.data):
            assert time.monotonic() < deadline, "ringfs up did not stop its nodes"
            time.sleep(0.1)

    def abort(self) -> None:
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], check=False)
        for pid in processes_using(self.data):
            os.kill(pid, 9)


@pytest.fixture
def up(fuse: None, tmp_path: Path) -> Iterator[Up]:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    instance = Up(tmp_path / "data", mountpoint)
    try:
        yield instance
    finally:
        instance.abort()


def node_states(up: Up) -> dict[str, tuple[str, bool]]:
    """Each node `ringfs status` lists: its state, and whether it is in the meta group."""
    status = ringfs("status", "--data", str(up.data))
    assert status.returncode == 0, status.stderr
    rows = [
        line.split() for line in status.stdout.splitlines() if re.match(r"n\d+ +\S+:\d+ ", line)
    ]
    return {row[0]: (row[2], "meta" in row) for row in rows}
