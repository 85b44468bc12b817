"""`ringfs bench`: sequential write and read of one large file, small-file creation, and
metadata operations (create + stat + unlink) from 1, 4 and 16 concurrent writers, on a mount
next to the same workloads on a local directory.

Numbers, not verdicts: it prints MB/s and files/s, and the peak memory of the process serving
the mount during the run. The page cache is dropped before each read (as root), so reads
come from the filesystem, not from memory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ringfs.tools import (
    appendbench,
    applybench,
    besidebench,
    movebench,
    raftbench,
    randombench,
    readspreadbench,
    refillbench,
    rpcbench,
    treebench,
)
from ringfs.tools.args import UserError
from ringfs.tools.timing import timed_read, timed_write

# Concurrent writers for the metadata workload.
WRITER_COUNTS = (1, 4, 16)


@dataclass(frozen=True)
class BenchConfig:
    mountpoint: Path
    local: Path | None
    size: int
    files: int
    # create + stat + unlink rounds per metadata run (shared among the writers).
    meta_rounds: int = 600


@dataclass(frozen=True)
class Result:
    write_mb_s: float
    read_mb_s: float
    files_per_s: float
    # writers -> metadata operations per second
    meta_ops_s: dict[int, float]


def _create(directory: Path, count: int) -> float:
    directory.mkdir()
    start = time.perf_counter()
    for i in range(count):
        with open(directory / f"f{i:05d}", "wb") as small:
            small.write(b"x" * 100)
    return count / (time.perf_counter() - start)


def _metadata_round(directory: Path, rounds: int) -> None:
    directory.mkdir()
    for i in range(rounds):
        path = directory / f"f{i}"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        os.stat(path)
        os.unlink(path)


def _metadata(directory: Path, writers: int, rounds: int) -> float:
    """Operations per second (3 per round: create, stat, unlink), writers in threads.

    Each writer has its own directory: the kernel serialises creates in one directory.
    """
    directory.mkdir()
    per_writer = max(1, rounds // writers)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=writers) as pool:
        for future in [
            pool.submit(_metadata_round, directory / f"w{w}", per_writer) for w in range(writers)
        ]:
            future.result()
    return 3 * per_writer * writers / (time.perf_counter() - start)


def measure(directory: Path, config: BenchConfig, label: str) -> Result:
    """Run the workloads in a fresh subdirectory of `directory`, then remove it."""
    work = Path(tempfile.mkdtemp(prefix="ringfs-bench-", dir=directory))
    try:
        print(f"[{label}] writing {config.size / 1e6:.0f} MB ...", flush=True)
        write = timed_write(work / "big", config.size)
        print(f"[{label}] reading it back ...", flush=True)
        read = timed_read(work / "big")
        print(f"[{label}] creating {config.files} small files ...", flush=True)
        creates = _create(work / "small", config.files)
        meta = {}
        for writers in WRITER_COUNTS:
            print(f"[{label}] create+stat+unlink, {writers} writers ...", flush=True)
            meta[writers] = _metadata(work / f"meta{writers}", writers, config.meta_rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Result(write, read, creates, meta)


def mount_process(mountpoint: Path) -> int | None:
    """The pid of the `ringfs mount`/`ringfs up` process serving `mountpoint`, if found."""
    wanted = str(mountpoint.absolute()).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = any(arg == b"ringfs.tools" or arg.endswith(b"/ringfs") for arg in argv[:3])
        if ours and wanted in argv and (b"mount" in argv or b"up" in argv):
            return int(entry.name)
    return None


def _reset_peak(pid: int) -> None:
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5\n")  # 5: reset the peak RSS


def _peak_mib(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def run(config: BenchConfig) -> None:
    pid = mount_process(config.mountpoint)
    if pid is not None:
        _reset_peak(pid)
    results = {"ringfs": measure(config.mountpoint, config, "ringfs")}
    peak = _peak_mib(pid) if pid is not None else None
    if config.local is not None:
        results["local"] = measure(config.local, config, "local")
    meta_columns = "".join(f"{f'meta ops/s x{n}':>16}" for n in WRITER_COUNTS)
    print(f"\n{'':<8}{'seq write MB/s':>16}{'seq read MB/s':>16}{'creates/s':>12}{meta_columns}")
    for label, result in results.items():
        meta = "".join(f"{result.meta_ops_s[n]:>16.0f}" for n in WRITER_COUNTS)
        print(
            f"{label:<8}{result.write_mb_s:>16.1f}{result.read_mb_s:>16.1f}"
            f"{result.files_per_s:>12.1f}{meta}"
        )
    if peak is not None:
        print(f"\npeak memory (RSS) of the mount process {pid}: {peak:.0f} MiB")


def main(args: argparse.Namespace) -> int:
    """`ringfs bench` with parsed arguments."""
    if not args.mountpoint.is_dir():
        raise UserError(f"{args.mountpoint} is not a directory")
    if args.refill:
        refillbench.run(args.mountpoint, args.size, args.repair_rate)
        return 0
    if args.spread:
        readspreadbench.run(args.mountpoint, args.size)
        return 0
    if args.moves:
        movebench.run(args.mountpoint, args.size, args.repair_rate)
        return 0
    if args.parts:
        if not applybench.WARMUP < args.files <= applybench.MAX_FILES:
            raise UserError(
                f"--parts needs --files from {applybench.WARMUP + 1} to {applybench.MAX_FILES}"
            )
        applybench.run(args.mountpoint, args.files)
        raftbench.run()
        rpcbench.run(args.mountpoint)
        return 0
    side_by_side = [
        bench
        for wanted, bench in (
            (args.tree, treebench),
            (args.appends, appendbench),
            (args.random, randombench),
            (args.beside_copies, besidebench),
        )
        if wanted
    ]
    if side_by_side:
        targets = [("ringfs", args.mountpoint)]
        targets += [] if args.local is None else [("local", args.local)]
        targets += [(directory.name, directory) for directory in args.compare]
        for _, directory in targets:
            if not directory.is_dir():
                raise UserError(f"{directory} is not a directory")
        side_by_side[0].run(targets)
        return 0
    run(BenchConfig(args.mountpoint, args.local, args.size, args.files))
    return 0
