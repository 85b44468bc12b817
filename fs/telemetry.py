"""A mount's metrics: its calls to the nodes (rate, latency, errors by kind), the bytes it
stored and read, and the map epoch it goes by."""

from __future__ import annotations

from collections.abc import Iterator

from ringfs.fs.cluster import Cluster
from ringfs.node.metrics import Registry, Sample


class MountMetrics:
    """The registry of one mount; `call` is the client's observer (`ClientConfig.observe`)."""

    def __init__(self) -> None:
        self.registry = registry = Registry()
        registry.counter("ringfs_client_calls_total", "Calls to the nodes, by method.")
        registry.counter("ringfs_client_errors_total", "Calls that failed, by method and kind.")
        registry.histogram("ringfs_client_call_duration_seconds", "Time a call took.")
        registry.sampled("ringfs_mount_written_bytes_total", "Block data stored.", "counter")
        registry.sampled("ringfs_mount_read_bytes_total", "Block data read.", "counter")
        registry.sampled("ringfs_map_epoch", "Epoch of the cluster map the mount goes by.")
        self._cluster: Cluster | None = None
        registry.collector(self._collect)

    def call(self, method: str, error: str | None, seconds: float) -> None:
        self.registry.inc("ringfs_client_calls_total", method=method)
        self.registry.observe("ringfs_client_call_duration_seconds", seconds, method=method)
        if error is not None:
            self.registry.inc("ringfs_client_errors_total", method=method, error=error)

    def watch(self, cluster: Cluster) -> None:
        """Read the byte counts and the map epoch from `cluster` at each scrape."""
        self._cluster = cluster

    def render(self) -> str:
        return self.registry.render()

    def _collect(self) -> Iterator[Sample]:
        if self._cluster is not None:
            yield "ringfs_mount_written_bytes_total", {}, self._cluster.bytes_written
            yield "ringfs_mount_read_bytes_total", {}, self._cluster.bytes_read
            yield "ringfs_map_epoch", {}, self._cluster.map.epoch
