"""The tree of `ringfs bench --tree`: the same bytes every time, and every workflow timed."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from ringfs.tools import treebench


def digest(root: Path) -> tuple[int, int, str]:
    """Files, bytes, and one digest of every path and content under `root`."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and ".git" not in p.parts)
    summary = hashlib.sha256()
    for path in files:
        summary.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return len(files), sum(p.stat().st_size for p in files), summary.hexdigest()


def test_the_tree_is_the_same_every_time(tmp_path: Path) -> None:
    treebench.make_tree(tmp_path / "one")
    treebench.make_tree(tmp_path / "two")
    files, size, first = digest(tmp_path / "one")
    assert files == treebench.FILES
    assert abs(size - treebench.TOTAL_BYTES) < treebench.TOTAL_BYTES * 0.05
    assert digest(tmp_path / "two")[2] == first


def test_every_workflow_runs_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "fixture").mkdir()
    fixture = treebench.make_fixture(tmp_path / "fixture")
    listed = subprocess.run(
        ["git", "ls-files"], cwd=fixture.repository, check=True, capture_output=True, text=True
    )
    assert len(listed.stdout.splitlines()) == treebench.FILES
    target = tmp_path / "target"
    target.mkdir()
    seconds = treebench.run_workflows(fixture, target)
    assert list(seconds) == list(treebench.WORKFLOWS)
    assert all(value > 0 for value in seconds.values())
    assert list(target.iterdir()) == []
