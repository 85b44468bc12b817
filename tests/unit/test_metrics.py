"""The Prometheus text page and the little HTTP that serves it."""

from __future__ import annotations

from typing import Any

from ringfs.node.metrics import LATENCY_BUCKETS, Registry
from ringfs.node.metrics_http import answer
from ringfs.node.telemetry import NodeMetrics


def test_counters_histograms_and_sampled_values_render_in_the_text_format() -> None:
    registry = Registry()
    registry.counter("x_total", "Things.")
    registry.histogram("x_seconds", "Time.")
    registry.sampled("x_size", "Size.")
    registry.collector(lambda: [("x_size", {"disk": 'a"b'}, 7)])
    registry.inc("x_total", method="get")
    registry.inc("x_total", 2, method="get")
    registry.observe("x_seconds", 0.003, method="get")
    registry.observe("x_seconds", 100.0, method="get")
    page = registry.render().splitlines()
    assert page[:3] == [
        "# HELP x_total Things.",
        "# TYPE x_total counter",
        'x_total{method="get"} 3',
    ]
    assert "# TYPE x_seconds histogram" in page
    assert 'x_seconds_bucket{method="get",le="0.0025"} 0' in page
    assert 'x_seconds_bucket{method="get",le="0.005"} 1' in page
    assert f'x_seconds_bucket{{method="get",le="{float(LATENCY_BUCKETS[-1])!r}"}} 1' in page
    assert 'x_seconds_bucket{method="get",le="+Inf"} 2' in page
    assert 'x_seconds_sum{method="get"} 100.003' in page
    assert 'x_seconds_count{method="get"} 2' in page
    assert page[-3:] == ["# HELP x_size Size.", "# TYPE x_size gauge", 'x_size{disk="a\\"b"} 7']


def node_stats() -> dict[str, Any]:
    """A `node.stats` map of a meta-group leader with one follower 5 entries behind."""
    record = {"missing": 4, "repaired": 1}
    return {
        "blocks": 10, "bytes": 4096, "capacity": 100, "free": 50, "reserve": 5, "epoch": 3,
        "reads": 2, "repair": {"current": None, "last": record, "repaired_bytes": 9},
        "scrub": {"progress": None, "corrupt": 0}, "intake": {"held": 0, "waiting": 0},
        "gc": {"waiting": 1},
        "meta_stats": {"term": 2, "commit_index": 40, "applied_index": 40, "last_index": 41,
                       "role": "leader", "match_index": {"n2": 41, "n3": 36}},
    }  # fmt: skip


def test_a_node_page_has_its_state_at_the_scrape() -> None:
    page = NodeMetrics([], node_stats).render().splitlines()
    for line in [
        "ringfs_store_blocks 10",
        "ringfs_map_epoch 3",
        "ringfs_repair_missing_copies 3",
        "ringfs_raft_leader 1",
        'ringfs_raft_member_lag_entries{member="n3"} 5',
        "ringfs_gc_waiting_blocks 1",
    ]:
        assert line in page


def test_a_method_the_node_does_not_know_is_counted_as_other() -> None:
    metrics = NodeMetrics(["block.get"], node_stats)
    metrics.request("block.get", None, 0.001)
    metrics.request("x" * 1000, "ENOSYS", 0.001)
    counted = [line for line in metrics.registry.render().splitlines() if "_total{" in line]
    assert counted == [
        'ringfs_rpc_requests_total{method="block.get"} 1',
        'ringfs_rpc_requests_total{method="other"} 1',
        'ringfs_rpc_errors_total{error="ENOSYS",method="other"} 1',
    ]


def test_only_get_of_the_metrics_path_is_answered() -> None:
    ok = answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", lambda: "m 1\n")
    assert ok.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"Content-Type: text/plain; version=0.0.4" in ok
    assert ok.endswith(b"\r\n\r\nm 1\n")
    assert answer(b"GET /other HTTP/1.1\r\n\r\n", str).startswith(b"HTTP/1.0 404")
    assert answer(b"POST /metrics HTTP/1.1\r\n\r\n", str).startswith(b"HTTP/1.0 405")
    assert answer(b"\r\n\r\n", str).startswith(b"HTTP/1.0 400")
