"""Metrics in the Prometheus text format (version 0.0.4), with no dependency.

A `Registry` holds counters and histograms that code updates as things happen, and values that
`collectors` read when a scrape asks (gauges, and counters kept elsewhere anyway). Labels are
given as keyword arguments; callers keep their values to small fixed sets (a method name the
node does not know is counted as "other"), so no peer can grow the registry. `render` is what
`GET /metrics` answers (`ringfs.node.metrics_http`).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable

#: Seconds: the latency buckets of every histogram here (0.5 ms to 30 s).
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)

Labels = tuple[tuple[str, str], ...]
#: One sample a collector gives: metric name, labels, value.
Sample = tuple[str, dict[str, str], float]


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help = name, kind, help_text


class Registry:
    """Counters, histograms and scrape-time gauges, rendered as one text page."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._counters: dict[str, dict[Labels, float]] = {}
        self._histograms: dict[str, dict[Labels, list[float]]] = {}
        self._sampled: dict[str, _Family] = {}
        self._collectors: list[Callable[[], Iterable[Sample]]] = []

    def counter(self, name: str, help_text: str) -> None:
        self._declare(name, "counter", help_text)
        self._counters[name] = {}

    def histogram(self, name: str, help_text: str) -> None:
        self._declare(name, "histogram", help_text)
        self._histograms[name] = {}

    def sampled(self, name: str, help_text: str, kind: str = "gauge") -> None:
        """A value a collector gives at each scrape: a gauge, or a counter kept elsewhere."""
        self._sampled[name] = self._declare(name, kind, help_text)

    def collector(self, collect: Callable[[], Iterable[Sample]]) -> None:
        """`collect` gives the gauges' samples at each scrape."""
        self._collectors.append(collect)

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        values = self._counters[name]
        key = _key(labels)
        values[key] = values.get(key, 0) + amount

    def observe(self, name: str, value: float, **labels: str) -> None:
        # One count per bucket and for +Inf, then the sum and the count.
        series = self._histograms[name].setdefault(_key(labels), [0] * (len(LATENCY_BUCKETS) + 3))
        series[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
        series[-2] += value
        series[-1] += 1

    def render(self) -> str:
        """The whole page: every family with its HELP and TYPE, then its samples."""
        lines: list[str] = []
        for name, values in self._counters.items():
            lines += self._head(name)
            lines += [_line(name, key, value) for key, value in sorted(values.items())]
        for name, series in self._histograms.items():
            lines += self._head(name)
            for key, counts in sorted(series.items()):
                cumulative = 0.0
                for bound, count in zip((*LATENCY_BUCKETS, math.inf), counts, strict=False):
                    cumulative += count
                    le = "+Inf" if bound == math.inf else repr(float(bound))
                    lines.append(_line(f"{name}_bucket", (*key, ("le", le)), cumulative))
                lines.append(_line(f"{name}_sum", key, counts[-2]))
                lines.append(_line(f"{name}_count", key, counts[-1]))
        sampled: dict[str, list[str]] = {name: [] for name in self._sampled}
        for collect in self._collectors:
            for name, labels, value in collect():
                sampled[name].append(_line(name, _key(labels), value))
        for name, samples in sampled.items():
            lines += self._head(name) + samples
        return "\n".join(lines) + "\n"

    def _declare(self, name: str, kind: str, help_text: str) -> _Family:
        if name in self._families:
            raise ValueError(f"metric {name} declared twice")
        family = self._families[name] = _Family(name, kind, help_text)
        return family

    def _head(self, name: str) -> list[str]:
        family = self._families[name]
        return [f"# HELP {name} {family.help}", f"# TYPE {name} {family.kind}"]


def _key(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def _line(name: str, labels: Labels, value: float) -> str:
    text = ",".join(f'{key}="{_escape(str(val))}"' for key, val in labels)
    number = repr(float(value)) if not float(value).is_integer() else str(int(value))
    return f"{name}{{{text}}} {number}" if text else f"{name} {number}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
