"""TLS from the command line: nodes and a mount with certificates of one cluster CA (made by
`ringfs tls-init`) work together over real TLS connections; a client without TLS, or with a
certificate of another CA, is refused in one line."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, Mount, ringfs
from tests.e2e.test_cli import assert_one_line_error

pytestmark = pytest.mark.fuse


def tls_options(directory: Path, name: str) -> tuple[str, ...]:
    return (
        "--tls-ca", str(directory / "ca.pem"),
        "--tls-cert", str(directory / f"{name}.pem"),
        "--tls-key", str(directory / f"{name}.key"),
    )  # fmt: skip


def make_certificates(directory: Path, *names: str) -> Path:
    result = ringfs("tls-init", str(directory), *names)
    assert result.returncode == 0, result.stderr
    assert (directory / "ca.key").stat().st_mode & 0o077 == 0
    return directory


@pytest.fixture
def tls_cluster(cluster: Cluster, tmp_path: Path) -> Cluster:
    """The cluster's nodes started again with TLS (one certificate for the three)."""
    certificates = make_certificates(tmp_path / "tls", "node", "client")
    for node in cluster.nodes:
        cluster.stop(node)
    cluster.node_args = tls_options(certificates, "node")
    cluster.tool_args = tls_options(certificates, "client")
    cluster.start(*cluster.nodes)
    return cluster


def status(cluster: Cluster, *options: str) -> subprocess.CompletedProcess[str]:
    return ringfs("status", "--cluster", cluster.seeds, "--secret-file",
                  str(cluster.secret_file), *options)  # fmt: skip


def test_nodes_and_a_mount_talk_tls_and_refuse_what_is_not_of_their_ca(
    tls_cluster: Cluster, mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    client = tls_options(tmp_path / "tls", "client")
    mounted = mount_factory(args=client).path
    payload = os.urandom(6 * 1024 * 1024 + 3)
    (mounted / "file").write_bytes(payload)
    assert (mounted / "file").read_bytes() == payload

    shown = status(tls_cluster, *client)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count(" active ") == 3, shown.stdout

    assert_one_line_error(status(tls_cluster), "cannot reach the cluster")  # plain TCP
    intruder = make_certificates(tmp_path / "other", "intruder")
    # A client of another CA does not trust the nodes...
    refused = status(tls_cluster, *tls_options(intruder, "intruder"))
    assert_one_line_error(refused, "TLS: CERTIFICATE_VERIFY_FAILED")
    # ... and one that trusts them, with a certificate of another CA, is refused by them.
    own = tls_options(intruder, "intruder")
    refused = status(tls_cluster, "--tls-ca", str(tmp_path / "tls" / "ca.pem"), *own[2:])
    assert_one_line_error(refused, "cannot reach the cluster")
    logs = "".join((tls_cluster.root / f"{n.name}.log").read_text() for n in tls_cluster.nodes)
    assert "refused: TLS: CERTIFICATE_VERIFY_FAILED" in logs, logs[-2000:]
    half = status(tls_cluster, "--tls-ca", str(tmp_path / "tls" / "ca.pem"))
    assert_one_line_error(half, "give --tls-ca, --tls-cert and --tls-key together")
    # The nodes still serve the mount.
    assert (mounted / "file").read_bytes() == payload
