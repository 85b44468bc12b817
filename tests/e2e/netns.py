"""Test hosts in network namespaces, made by the test and removed after it.

Each host is a namespace with one veth link to a bridge in the test's own namespace, on a
private /24 that exists only inside this machine. Cutting a host off takes its link down:
it can then talk to nobody, and nobody to it. Needs root, iproute2 and nsenter
(util-linux).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 is not installed"
    if shutil.which("nsenter") is None:
        return "nsenter (util-linux) is not installed"
    return None


@dataclass(frozen=True)
class Host:
    namespace: str
    address: str
    link: str  # the host's link as seen from the bridge side

    @property
    def prefix(self) -> tuple[str, ...]:
        """Run a command on this host: prepend this. It enters the network namespace only:
        `ip netns exec` also makes a mount namespace, whose copy of every FUSE mount there is
        at the time (another test's, running beside) would keep that mount's filesystem
        alive past its `fusermount3 -u`, and its process serving."""
        return ("nsenter", f"--net=/run/netns/{self.namespace}")

    def cut(self) -> None:
        _ip("link", "set", self.link, "down")

    def heal(self) -> None:
        _ip("link", "set", self.link, "up")


@contextmanager
def hosts(count: int) -> Iterator[list[Host]]:
    """`count` hosts on one bridge; everything is deleted on exit, whatever happened."""
    tag = f"{os.getpid() % 10000:04d}"
    subnet = f"10.213.{os.getpid() % 250}"
    bridge = f"rfb{tag}"
    made: list[Host] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{subnet}.254/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i in range(1, count + 1):
            host = Host(f"rfs{tag}n{i}", f"{subnet}.{i}", f"rfv{tag}{i}")
            inside = f"rfi{tag}{i}"
            _ip("netns", "add", host.namespace)
            made.append(host)
            _ip("link", "add", host.link, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", host.namespace)
            _ip("link", "set", host.link, "master", bridge)
            _ip("link", "set", host.link, "up")
            _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", inside)
            _ip("-n", host.namespace, "link", "set", inside, "up")
            _ip("-n", host.namespace, "link", "set", "lo", "up")
        yield made
    finally:
        for host in made:
            subprocess.run(["ip", "netns", "del", host.namespace], check=False,
                           capture_output=True)  # fmt: skip
            subprocess.run(["ip", "link", "del", host.link], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True)
