"""`ringfs bench --appends`: a log written record by record, each record fsync'd.

What a logger, a database journal or a mail spool does: append a record, fsync, repeat. It
appends `RECORDS` records of `RECORD_BYTES` (8 MiB, two chunks) to a new file in each directory
given, and prints the time of each append and fsync, by the megabyte of the file it landed in
(the cost of a flush may grow with the chunk it writes), and the records per second.

Numbers, not verdicts: `docs/benchmarks.md` reads them.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

RECORD_BYTES = 4096
RECORDS = 2048
MiB = 1024 * 1024


def appends(directory: Path) -> list[float]:
    """Seconds of each append and fsync of a new log in `directory` (removed after)."""
    path = directory / f"ringfs-appends-{os.getpid()}.log"
    record = os.urandom(RECORD_BYTES)
    seconds = []
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
    try:
        for _ in range(RECORDS):
            start = time.perf_counter()
            os.write(log, record)
            os.fsync(log)
            seconds.append(time.perf_counter() - start)
    finally:
        os.close(log)
        path.unlink()
    return seconds


def _ms(samples: list[float], quantile: float) -> str:
    return f"{sorted(samples)[int(quantile * (len(samples) - 1))] * 1e3:8.2f}"


def run(targets: list[tuple[str, Path]]) -> None:
    """Write the log in each target directory in turn; print the latencies side by side."""
    results = {label: appends(directory) for label, directory in targets}
    per_mib = MiB // RECORD_BYTES
    print(f"append of {RECORD_BYTES} bytes + fsync, ms (median / p90), by MiB of the file:")
    print(f"{'MiB':<8}" + "".join(f"{label:>22}" for label in results))
    for first in range(0, RECORDS, per_mib):
        cells = [
            f"{_ms(s[first : first + per_mib], 0.5)} / {_ms(s[first : first + per_mib], 0.9)}"
            for s in results.values()
        ]
        print(f"{first // per_mib:<8}" + "".join(f"{cell:>22}" for cell in cells))
    rates = [f"{len(s) / sum(s):>22.0f}" for s in results.values()]
    print(f"{'records/s':<8}" + "".join(rates))
    medians = [f"{statistics.median(s) * 1e3:>22.2f}" for s in results.values()]
    print(f"{'median':<8}" + "".join(medians))
