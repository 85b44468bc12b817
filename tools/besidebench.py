"""`ringfs bench --beside-copies`: metadata operations while large files are copied in.

What a user feels when `ls`, `touch` or an editor's save runs while `cp` of big files goes on
in the same mount: each operation is one replicated round, and on a mount where block
transfers and metadata calls shared a connection to a node, a round waited behind the blocks
queued ahead of it. It times creating (and closing) an empty file in each directory given,
first with nothing else running, then while two `cp` processes copy a 256 MiB file each into
that directory, and removes everything after.

Numbers, not verdicts: `docs/benchmarks.md` reads them.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

MiB = 1024 * 1024
COPY_BYTES = 256 * MiB
COPIES = 2
IDLE_CREATES = 100


def _create(path: Path) -> float:
    """Seconds to create and close an empty file at `path`."""
    start = time.perf_counter()
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))
    return time.perf_counter() - start


def beside_copies(directory: Path, source: Path) -> tuple[list[float], list[float]]:
    """Seconds of each create in `directory` with nothing else running, and while `COPIES`
    copies of `source` into it run."""
    made: list[Path] = []
    try:
        idle = []
        for n in range(IDLE_CREATES):
            made.append(directory / f"ringfs-beside-{os.getpid()}-idle-{n}")
            idle.append(_create(made[-1]))
        targets = [directory / f"ringfs-beside-{os.getpid()}-copy-{n}" for n in range(COPIES)]
        made += targets
        copies = [subprocess.Popen(["cp", str(source), str(target)]) for target in targets]
        busy: list[float] = []
        try:
            while not busy or any(copy.poll() is None for copy in copies):
                made.append(directory / f"ringfs-beside-{os.getpid()}-busy-{len(busy)}")
                busy.append(_create(made[-1]))
        finally:
            for copy in copies:
                if copy.wait() != 0:
                    raise RuntimeError(f"cp into {directory} failed")
        return idle, busy
    finally:
        for path in made:
            path.unlink(missing_ok=True)


def run(targets: list[tuple[str, Path]]) -> None:
    """Time the creates in each target directory in turn; print the figures side by side."""
    with tempfile.NamedTemporaryFile(prefix="ringfs-beside-") as source:
        piece = os.urandom(MiB)
        for _ in range(COPY_BYTES // MiB):
            source.write(piece)
        source.flush()
        results = {
            label: beside_copies(directory, Path(source.name)) for label, directory in targets
        }
    print(f"create + close of an empty file, idle and beside {COPIES} copies of "
          f"{COPY_BYTES // MiB} MiB files into the same directory (ms):")  # fmt: skip
    print(f"{'':<22}" + "".join(f"{label:>14}" for label in results))
    rows = {
        "idle median": [statistics.median(idle) for idle, _ in results.values()],
        "beside: median": [statistics.median(busy) for _, busy in results.values()],
        "beside: p90": [sorted(busy)[int(0.9 * (len(busy) - 1))] for _, busy in results.values()],
        "beside: max": [max(busy) for _, busy in results.values()],
    }
    for name, values in rows.items():
        print(f"{name:<22}" + "".join(f"{value * 1e3:>14.2f}" for value in values))
    print(f"{'beside: creates':<22}" + "".join(f"{len(busy):>14}" for _, busy in results.values()))
