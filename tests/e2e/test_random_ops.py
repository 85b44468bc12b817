"""Random operation sequences on the mount and on a local directory give the same results.

Each seeded run draws a few hundred operations over a small namespace (so they collide:
renames over existing names, removing non-empty directories, links to vanished files) and
applies each one to both trees, comparing the outcome (value or errno) step by step and the
whole trees at the end. A failure names the seed and the step, which replays it exactly.
"""

from __future__ import annotations

import errno
import os
import random
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.fuse

SEEDS = range(6)
STEPS = 400
NAMES = ["a", "b", "c", "d/a", "d/b", "e", "d/e", "d/e/a", "e/b"]
MAX_FILE = 256 * 1024


def outcome(operation: Callable[[Path], Any], root: Path) -> tuple[str, Any]:
    try:
        return ("ok", operation(root))
    except OSError as exc:
        return ("err", errno.errorcode.get(exc.errno or 0, exc.errno))


def _write(path: Path, offset: int, data: bytes) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        return os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _read(path: Path) -> bytes:
    with open(path, "rb") as source:
        return source.read()


def _truncate(path: Path, size: int) -> None:
    os.truncate(path, size)


def _stat(path: Path) -> tuple[int, int, int, int]:
    st = os.lstat(path)
    size = st.st_size if not stat.S_ISDIR(st.st_mode) else -1
    return (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_nlink, size)


def _listdir(path: Path) -> list[str]:
    return sorted(os.listdir(path))


def draw(rng: random.Random) -> tuple[str, Callable[[Path], Any]]:
    """One random operation, as a description and a function of the tree's root."""
    name, other = rng.choice(NAMES), rng.choice(NAMES)
    offset = rng.randrange(0, MAX_FILE)
    data = rng.randbytes(rng.randrange(1, 70_000))
    size = rng.randrange(0, MAX_FILE)
    mode = rng.choice([0o600, 0o644, 0o755, 0o700])
    ops: list[tuple[str, Callable[[Path], Any]]] = [
        (f"write {name} @{offset} +{len(data)}", lambda r: _write(r / name, offset, data)),
        (f"read {name}", lambda r: _read(r / name)),
        (f"truncate {name} {size}", lambda r: _truncate(r / name, size)),
        (f"mkdir {name}", lambda r: os.mkdir(r / name)),
        (f"rmdir {name}", lambda r: os.rmdir(r / name)),
        (f"unlink {name}", lambda r: os.unlink(r / name)),
        (f"rename {name} {other}", lambda r: os.rename(r / name, r / other)),
        (f"link {name} {other}", lambda r: os.link(r / name, r / other)),
        (f"symlink {other} at {name}", lambda r: os.symlink(other, r / name)),
        (f"readlink {name}", lambda r: os.readlink(r / name)),
        (f"chmod {name} {mode:o}", lambda r: os.chmod(r / name, mode)),
        (f"stat {name}", lambda r: _stat(r / name)),
        (f"listdir {name}", lambda r: _listdir(r / name)),
    ]
    return rng.choice(ops)


def snapshot(root: Path) -> dict[str, Any]:
    """Everything comparable about a tree: types, modes, link counts, contents, targets."""
    result: dict[str, Any] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            key = str(path.relative_to(root))
            kind, mode, nlink, size = _stat(path)
            if stat.S_ISLNK(os.lstat(path).st_mode):
                result[key] = ("link", os.readlink(path))
            elif stat.S_ISDIR(kind):
                result[key] = ("dir", mode, nlink)
            else:
                result[key] = ("file", mode, nlink, size, _read(path))
    return result


@pytest.mark.parametrize("seed", SEEDS)
def test_random_operations_match_a_local_directory(
    mounted: Path, tmp_path: Path, seed: int
) -> None:
    local = tmp_path / "local"
    local.mkdir()
    remote = mounted / "tree"
    remote.mkdir()
    rng = random.Random(seed)
    for step in range(STEPS):
        description, operation = draw(rng)
        expected = outcome(operation, local)
        got = outcome(operation, remote)
        assert got == expected, f"seed {seed} step {step}: {description}"
    assert snapshot(remote) == snapshot(local), f"seed {seed}: trees differ at the end"
