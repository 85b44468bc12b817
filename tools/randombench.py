"""`ringfs bench --random`: reads of 4 KiB at random places in a large file, cold.

What a database, a git pack or a program mapping a large file does: read a page here and a
page there. It writes a file of `FILE_BYTES` in each directory given, drops the page cache (as
root), and times `READS` reads of `READ_BYTES` at 4 KiB-aligned places drawn at random (the
same places everywhere), then reads the file sequentially once, cold again, to show that
sequential reads still go at full speed. The file is removed after.

Numbers, not verdicts: `docs/benchmarks.md` reads them.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from pathlib import Path

from ringfs.tools.timing import drop_caches, timed_read

MiB = 1024 * 1024
FILE_BYTES = 256 * MiB
READ_BYTES = 4096
READS = 500


def random_reads(directory: Path) -> tuple[list[float], float]:
    """Seconds of each random read of a new file in `directory`, and the cold sequential
    read's MB/s."""
    path = directory / f"ringfs-random-{os.getpid()}.dat"
    piece = os.urandom(MiB)
    with open(path, "wb") as file:
        for _ in range(FILE_BYTES // MiB):
            file.write(piece)
        file.flush()
        os.fsync(file.fileno())  # clean pages: dropping the cache drops them
    places = random.Random(7).sample(range(FILE_BYTES // READ_BYTES), READS)
    seconds = []
    try:
        drop_caches()
        fd = os.open(path, os.O_RDONLY)
        try:
            for place in places:
                start = time.perf_counter()
                data = os.pread(fd, READ_BYTES, place * READ_BYTES)
                seconds.append(time.perf_counter() - start)
                offset = place * READ_BYTES % MiB
                if data != piece[offset : offset + READ_BYTES]:
                    raise RuntimeError(f"{path}: other bytes than written at {place * READ_BYTES}")
        finally:
            os.close(fd)
        sequential = timed_read(path)
    finally:
        path.unlink()
    return seconds, sequential


def run(targets: list[tuple[str, Path]]) -> None:
    """Read in each target directory in turn; print the figures side by side."""
    results = {label: random_reads(directory) for label, directory in targets}
    print(f"{READS} cold reads of {READ_BYTES} bytes at random in a {FILE_BYTES // MiB} MiB file:")
    print(f"{'':<20}" + "".join(f"{label:>14}" for label in results))
    rows = {
        "reads/s": [len(s) / sum(s) for s, _ in results.values()],
        "median ms": [statistics.median(s) * 1e3 for s, _ in results.values()],
        "p90 ms": [sorted(s)[int(0.9 * (len(s) - 1))] * 1e3 for s, _ in results.values()],
        "then seq. MB/s": [sequential for _, sequential in results.values()],
    }
    for name, values in rows.items():
        print(f"{name:<20}" + "".join(f"{value:>14.2f}" for value in values))
