"""`python -m ringfs.tools.intakebench [CONNECTIONS]`: what a node holds when many connections
send large messages and stall.

It starts a cluster of its own (three local nodes, in a temporary directory), opens
CONNECTIONS (30) authenticated connections to n1, sends on each all but the last MiB of a
16 MiB `block.put` and stops there, and prints n1's resident memory before and after (the
kernel's VmRSS). Before the node-wide intake budget (`ringfs.node.rpc.intake`), each such
connection made the node hold its whole message. Everything is stopped and removed at the end.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

from ringfs.node.rpc.client import split_address
from ringfs.node.rpc.protocol import Connection, Role
from ringfs.tools.args import seeds
from ringfs.tools.local import read_secret
from ringfs.tools.refillbench import own_cluster

MiB = 1024 * 1024
MESSAGE = 16 * MiB - 1024
HELD_BACK = MiB
SETTLE = 3.0


def resident_mib(pid: int) -> float:
    """The process's resident memory (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for process {pid}")


def stalled_block_put(address: str, secret: bytes) -> socket.socket:
    """An authenticated connection that sent all of a block.put but its last MiB."""
    host, port = split_address(address)
    sock = socket.create_connection((host, port), timeout=10)
    conn = Connection(Role.CLIENT, secret)
    while not conn.is_open:
        for buffer in conn.data_to_send():
            sock.sendall(buffer)
        if not conn.is_open:
            conn.receive_data(sock.recv(65536))
    block_put = [os.urandom(16), bytes(32), os.urandom(MESSAGE)]  # id, checksum, data
    _, buffers = conn.send_request("block.put", block_put)
    message = b"".join(bytes(buffer) for buffer in buffers)[:-HELD_BACK]
    sock.setblocking(False)
    sent, deadline = 0, time.monotonic() + 5
    while sent < len(message) and time.monotonic() < deadline:
        try:
            sent += sock.send(message[sent:])
        except BlockingIOError:
            time.sleep(0.01)  # the node reads no more: what it has not read waits in TCP
    return sock


def main(argv: list[str]) -> int:
    connections = int(argv[0]) if argv else 30
    with own_cluster("ringfs-intake-") as (cluster, spec, nodes):
        address = seeds(spec)[0]
        secret = read_secret(cluster.secret_file)
        time.sleep(SETTLE)
        before = resident_mib(nodes["n1"].pid)
        socks = [stalled_block_put(address, secret) for _ in range(connections)]
        time.sleep(SETTLE)
        after = resident_mib(nodes["n1"].pid)
        for sock in socks:
            sock.close()
    print(
        f"n1 resident memory: {before:.0f} MiB idle, {after:.0f} MiB with {connections} "
        f"connections each stalled {HELD_BACK // MiB} MiB short of a {MESSAGE / MiB:.0f} MiB "
        "block.put"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
