"""A node's metrics: what its RPC server and block store do, and its state at each scrape.

Counted as it happens: requests per method with their latency, errors by method and name,
block bytes written and read. Read at each scrape from the same counters `node.stats` gives:
the store, the disk, the map epoch, Raft (term, commit and applied index, the lag of each
member on the leader), the repair, scrub and garbage backlogs and the intake budget.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from typing import Any

from ringfs.node.metrics import Registry, Sample


class NodeMetrics:
    """The registry of one node, and the hooks the service and server call."""

    def __init__(self, methods: Collection[str], stats: Callable[[], dict[str, Any]]) -> None:
        """`methods`: the RPC methods the node serves (any other is counted as "other");
        `stats`: the node's `node.stats` map, at scrape time."""
        self._methods = frozenset(methods)
        self._stats = stats
        self.registry = registry = Registry()
        registry.counter("ringfs_rpc_requests_total", "Requests served, by method.")
        registry.counter("ringfs_rpc_errors_total", "Requests answered with an error, by name.")
        registry.histogram("ringfs_rpc_duration_seconds", "Time to answer a request.")
        registry.counter("ringfs_block_written_bytes_total", "Block data stored by block.put.")
        registry.counter("ringfs_block_read_bytes_total", "Block data served by block.get.")
        for name, text in GAUGES.items():
            registry.sampled(name, text)
        registry.collector(self._collect)

    def request(self, method: str, error: str | None, seconds: float) -> None:
        """One request answered (by `RpcServer`)."""
        method = method if method in self._methods else "other"
        self.registry.inc("ringfs_rpc_requests_total", method=method)
        self.registry.observe("ringfs_rpc_duration_seconds", seconds, method=method)
        if error is not None:
            self.registry.inc("ringfs_rpc_errors_total", method=method, error=error)

    def wrote(self, size: int) -> None:
        self.registry.inc("ringfs_block_written_bytes_total", size)

    def read(self, size: int) -> None:
        self.registry.inc("ringfs_block_read_bytes_total", size)

    def render(self) -> str:
        return self.registry.render()

    def _collect(self) -> Iterator[Sample]:
        stats = self._stats()
        yield "ringfs_store_blocks", {}, stats["blocks"]
        yield "ringfs_store_bytes", {}, stats["bytes"]
        yield "ringfs_disk_capacity_bytes", {}, stats["capacity"]
        yield "ringfs_disk_free_bytes", {}, stats["free"]
        yield "ringfs_disk_reserve_bytes", {}, stats["reserve"]
        yield "ringfs_map_epoch", {}, stats["epoch"]
        yield "ringfs_reads_served_blocks", {}, stats["reads"]
        repair = stats["repair"]
        record = repair["current"] or repair["last"]
        missing = record["missing"] - record["repaired"] if record else 0
        yield "ringfs_repair_missing_copies", {}, missing
        yield "ringfs_repair_copied_bytes", {}, repair["repaired_bytes"]
        scrub = stats["scrub"]
        yield "ringfs_scrub_progress", {}, scrub["progress"] or 0
        yield "ringfs_scrub_corrupt_blocks", {}, scrub["corrupt"]
        intake = stats["intake"]
        yield "ringfs_intake_held_bytes", {}, intake["held"]
        yield "ringfs_intake_waiting_requests", {}, intake["waiting"]
        if stats["gc"] is not None:
            yield "ringfs_gc_waiting_blocks", {}, stats["gc"]["waiting"]
        if (raft := stats["meta_stats"]) is not None:
            yield from _raft(raft)


def _raft(raft: dict[str, Any]) -> Iterator[Sample]:
    yield "ringfs_raft_term", {}, raft["term"]
    yield "ringfs_raft_commit_index", {}, raft["commit_index"]
    yield "ringfs_raft_applied_index", {}, raft["applied_index"]
    yield "ringfs_raft_last_index", {}, raft["last_index"]
    yield "ringfs_raft_leader", {}, 1 if raft["role"] == "leader" else 0
    for member, match in sorted(raft["match_index"].items()):
        yield "ringfs_raft_member_lag_entries", {"member": member}, raft["last_index"] - match


#: The values read at each scrape, with their help.
GAUGES = {
    "ringfs_store_blocks": "Blocks in this node's store.",
    "ringfs_store_bytes": "Bytes of block data in this node's store.",
    "ringfs_disk_capacity_bytes": "Size of the store's filesystem.",
    "ringfs_disk_free_bytes": "Free space on the store's filesystem.",
    "ringfs_disk_reserve_bytes": "Free space block writes leave for the metadata.",
    "ringfs_map_epoch": "Epoch of the cluster map this node goes by.",
    "ringfs_reads_served_blocks": "Blocks served to block.get since the node started.",
    "ringfs_repair_missing_copies": "Copies this node lacks, as its last repair pass found.",
    "ringfs_repair_copied_bytes": "Bytes repair stored on this node since it started.",
    "ringfs_scrub_progress": "Share of the scrub pass under way done (0 to 1).",
    "ringfs_scrub_corrupt_blocks": "Corrupt copies the scrub pass under way found.",
    "ringfs_intake_held_bytes": "Bytes of large requests received and not yet answered.",
    "ringfs_intake_waiting_requests": "Requests waiting for room in the intake budget.",
    "ringfs_gc_waiting_blocks": "Blocks listed as garbage (on meta-group members).",
    "ringfs_raft_term": "Raft term of this member.",
    "ringfs_raft_commit_index": "Raft commit index of this member.",
    "ringfs_raft_applied_index": "Log index applied to this member's metadata.",
    "ringfs_raft_last_index": "Last index of this member's Raft log.",
    "ringfs_raft_leader": "1 if this member leads the meta group.",
    "ringfs_raft_member_lag_entries": "On the leader: entries each member lacks of its log.",
}
