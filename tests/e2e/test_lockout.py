"""A peer without the secret cannot lock anyone out.

It keeps 300 connections open to every node without a word, each re-opened every 4.5 s (just
inside the handshake deadline) or as soon as the node closes it: once the attack that held
every connection slot of a node for as long as it ran. It connects from 127.0.0.2, another
host as far as the nodes can tell (the loopback network is 127.0.0.0/8). A new mount still
comes up and works, and `ringfs status` answers."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, Mount, ringfs

pytestmark = pytest.mark.fuse

PER_NODE = 300
REOPEN_AFTER = 4.5
FROM = ("127.0.0.2", 0)


class Flood:
    """Connections that never speak, kept open to each address until stopped."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        #: Connections a node closed before the flood did.
        self.closed_by_node = 0
        self._selector = selectors.DefaultSelector()
        self._opened: dict[socket.socket, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Flood:
        for address in self.addresses:
            for _ in range(PER_NODE):
                self._open(address)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for sock in list(self._opened):
            self._close(sock)
        self._selector.close()

    def _open(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=2, source_address=FROM)
        sock.setblocking(False)
        self._opened[sock] = time.monotonic()
        self._selector.register(sock, selectors.EVENT_READ, address)

    def _close(self, sock: socket.socket) -> None:
        self._selector.unregister(sock)
        del self._opened[sock]
        sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    closed = sock.recv(4096) == b""
                except ConnectionError:
                    closed = True
                except BlockingIOError:
                    closed = False
                if closed:
                    self.closed_by_node += 1
                    self._reopen(sock, key.data)
            now = time.monotonic()
            for sock, opened in list(self._opened.items()):
                if now - opened > REOPEN_AFTER:
                    self._reopen(sock, self._selector.get_key(sock).data)

    def _reopen(self, sock: socket.socket, address: str) -> None:
        self._close(sock)
        with contextlib.suppress(OSError):  # refused: one connection fewer from now on
            self._open(address)


@pytest.fixture
def flood(cluster: Cluster) -> Iterator[Flood]:
    with Flood([node.address for node in cluster.nodes]) as running:
        yield running


def test_connections_that_never_authenticate_lock_no_one_out(
    cluster: Cluster, mount_factory: Callable[..., Mount], flood: Flood
) -> None:
    time.sleep(1)  # the flood is at full strength
    status = ringfs("status", "--cluster", cluster.seeds, "--secret-file", str(cluster.secret_file))
    assert status.returncode == 0, status.stderr
    assert status.stdout.count(" active ") == 3, status.stdout
    mounted: Path = mount_factory().path
    payload = os.urandom(5 * 1024 * 1024 + 7)
    (mounted / "file").write_bytes(payload)
    assert (mounted / "file").read_bytes() == payload
    # The nodes made room by closing the flood's own connections.
    assert flood.closed_by_node >= len(cluster.nodes) * (PER_NODE - 64)
    logs = "".join((cluster.root / f"{node.name}.log").read_text() for node in cluster.nodes)
    assert "closing connections from 127.0.0.2 that have not authenticated" in logs
