"""`ringfs bench --tree`: what people do with a source tree, timed on each directory given.

The workflows: copy the tree in with `cp -a`, unpack it with `tar x`, `git clone` it from a local
repository, `git status` in the clone with cold caches, copy it with `rsync -a`, and `rm -rf` one
copy. The tree is 3,600 files, about 53 MB, in 180 directories up to three deep, made up from a
fixed seed: every run on every machine copies the same bytes. The bytes are text, so git
compresses them as it would source code.

Numbers, not verdicts: it prints seconds per workflow and directory.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

FILES = 3600
DIRECTORIES = 180
TOTAL_BYTES = 53_000_000
SEED = 3600
# Files of a source tree: most a few KB, a few far bigger (log-normal sizes).
MEDIAN_BYTES = 6000
SIZE_SPREAD = 1.2
WORDS = 2000

WORKFLOWS = ("cp -a", "tar x", "git clone", "git status", "rsync -a", "rm -rf")
# git without the user's configuration, and with an identity for the fixture's commit.
GIT = ("git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "gc.auto=0")


@dataclass(frozen=True)
class Fixture:
    """The tree as plain files, as a git repository with one commit, and as a tarball."""

    tree: Path
    repository: Path
    tarball: Path


def _layout(rng: random.Random) -> list[Path]:
    """DIRECTORIES relative paths, each under a random earlier one or the top, at most
    three deep."""
    dirs = [Path(".")]
    while len(dirs) <= DIRECTORIES:
        parent = rng.choice([d for d in dirs if len(d.parts) < 3])
        dirs.append(parent / f"pkg{len(dirs):03d}")
    return dirs[1:]


def _text(rng: random.Random) -> bytes:
    """A pool of source-like text that files take slices of."""
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz_", k=rng.randint(2, 10)))
             for _ in range(WORDS)]  # fmt: skip
    lines = []
    size = 0
    while size < 4 * 1024 * 1024:
        line = "    " * rng.randint(0, 3) + " ".join(rng.choices(words, k=rng.randint(1, 12)))
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines).encode()


def make_tree(root: Path) -> None:
    """Write the tree under `root` (which must not exist)."""
    rng = random.Random(SEED)
    dirs = _layout(rng)
    sizes = [rng.lognormvariate(0, SIZE_SPREAD) for _ in range(FILES)]
    scale = TOTAL_BYTES / sum(sizes)
    text = _text(rng)
    root.mkdir()
    for directory in dirs:
        (root / directory).mkdir()
    for n, weight in enumerate(sizes):
        size = min(len(text), max(1, int(weight * scale)))
        start = rng.randrange(len(text) - size + 1)
        path = root / rng.choice(dirs) / f"module{n:04d}.py"
        path.write_bytes(text[start : start + size])


def make_fixture(work: Path) -> Fixture:
    tree, repository, tarball = work / "tree", work / "repository", work / "tree.tar"
    make_tree(tree)
    _run("cp", "-a", str(tree), str(repository))
    _run(*GIT, "init", "-q", cwd=repository)
    _run(*GIT, "add", "-A", cwd=repository)
    _run(*GIT, "commit", "-q", "-m", "tree", cwd=repository)
    _run("tar", "cf", str(tarball), "-C", str(tree), ".")
    return Fixture(tree, repository, tarball)


def _run(*argv: str, cwd: Path | None = None) -> None:
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def _untar(tarball: Path, destination: Path) -> None:
    destination.mkdir()
    _run("tar", "xf", str(tarball), "-C", str(destination))


def _drop_caches() -> None:
    """Cold caches for `git status` (needs root; skipped otherwise)."""
    os.sync()
    with contextlib.suppress(OSError), open("/proc/sys/vm/drop_caches", "w") as control:
        control.write("3\n")


def _timed(action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def run_workflows(fixture: Fixture, directory: Path) -> dict[str, float]:
    """Seconds per workflow, in a fresh subdirectory of `directory`, removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix="ringfs-tree-", dir=directory))
    tree = str(fixture.tree)
    try:
        seconds = {
            "cp -a": _timed(lambda: _run("cp", "-a", tree, str(work / "cp"))),
            "tar x": _timed(lambda: _untar(fixture.tarball, work / "tar")),
            "git clone": _timed(
                lambda: _run(*GIT, "clone", "-q", str(fixture.repository), str(work / "clone"))
            ),
        }
        _drop_caches()
        seconds["git status"] = _timed(lambda: _run(*GIT, "status", "-s", cwd=work / "clone"))
        seconds["rsync -a"] = _timed(lambda: _run("rsync", "-a", f"{tree}/", str(work / "rsync")))
        seconds["rm -rf"] = _timed(lambda: _run("rm", "-rf", str(work / "cp")))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return seconds


def run(targets: list[tuple[str, Path]]) -> None:
    """Make the fixture, run the workflows on each (label, directory), print a table."""
    with tempfile.TemporaryDirectory(prefix="ringfs-tree-fixture-") as work:
        fixture = make_fixture(Path(work))
        results = {}
        for label, directory in targets:
            print(f"[{label}] tree workflows ...", flush=True)
            results[label] = run_workflows(fixture, directory)
    print(f"\nseconds, {FILES} files, {TOTAL_BYTES / 1e6:.0f} MB")
    print(f"{'':<12}" + "".join(f"{label:>12}" for label in results))
    for workflow in WORKFLOWS:
        row = "".join(f"{times[workflow]:>12.2f}" for times in results.values())
        print(f"{workflow:<12}{row}")
