"""Prometheus metrics from real node processes and a real mount, scraped over HTTP after a
file is written through the mount."""

from __future__ import annotations

import os
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import free_ports
from tests.e2e.conftest import Cluster, Mount

pytestmark = pytest.mark.fuse

MiB = 1024 * 1024
SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


def scrape(port: int) -> dict[str, float]:
    """Every sample of the page at `port`, by name with its labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        page = response.read().decode()
    samples = {}
    for line in page.splitlines():
        if not line.startswith("#"):
            match = SAMPLE.match(line)
            assert match, line
            samples[match[1] + (match[2] or "")] = float(match[3])
    return samples


def test_nodes_and_a_mount_serve_their_metrics(
    cluster: Cluster, mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    ports = free_ports(len(cluster.nodes) + 1)
    for node, port in zip(cluster.nodes, ports, strict=False):
        cluster.stop(node)
        node.args = ("--metrics", f"127.0.0.1:{port}")
    cluster.start(*cluster.nodes)
    mounted = mount_factory(args=("--metrics", f"127.0.0.1:{ports[-1]}")).path
    payload = os.urandom(5 * MiB)
    (mounted / "file").write_bytes(payload)
    assert (mounted / "file").read_bytes() == payload

    nodes = [scrape(port) for port in ports[:-1]]
    written = sum(n["ringfs_block_written_bytes_total"] for n in nodes)
    assert written >= 2 * len(payload)  # a write quorum of copies, at least
    assert all(n['ringfs_rpc_requests_total{method="block.put"}'] > 0 for n in nodes)
    leaders = [n for n in nodes if n.get("ringfs_raft_leader") == 1]
    assert len(leaders) == 1
    leader = leaders[0]
    assert leader["ringfs_raft_term"] >= 1
    assert leader["ringfs_raft_applied_index"] == leader["ringfs_raft_commit_index"] > 0
    assert leader['ringfs_rpc_duration_seconds_count{method="meta.apply"}'] > 0
    lags = [key for key in leader if key.startswith("ringfs_raft_member_lag_entries{")]
    assert len(lags) == 2
    assert all(n["ringfs_map_epoch"] >= 1 and n["ringfs_disk_capacity_bytes"] > 0 for n in nodes)

    mount = scrape(ports[-1])
    assert mount["ringfs_mount_written_bytes_total"] >= len(payload)
    assert mount['ringfs_client_calls_total{method="block.put"}'] >= 2
    assert mount["ringfs_map_epoch"] >= 1
