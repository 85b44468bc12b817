"""rsync and git on the mount: the tools people point at a filesystem to trust it."""

from __future__ import annotations

import filecmp
import os
import shutil
from pathlib import Path

import pytest

from tests.e2e.test_tools import MiB, random_file, run

pytestmark = pytest.mark.fuse


def _tree(root: Path) -> Path:
    (root / "src" / "pkg").mkdir(parents=True)
    random_file(root / "src" / "blob.bin", 6 * MiB + 1)
    (root / "src" / "pkg" / "module.py").write_text("print('hello')\n")
    os.chmod(root / "src" / "pkg" / "module.py", 0o755)
    os.symlink("pkg/module.py", root / "src" / "entry")
    os.utime(root / "src" / "blob.bin", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    return root / "src"


def _assert_same_tree(left: Path, right: Path) -> None:
    comparison = filecmp.dircmp(left, right)
    assert (comparison.left_only, comparison.right_only, comparison.diff_files) == ([], [], [])
    for name in comparison.common_files:
        assert filecmp.cmp(left / name, right / name, shallow=False)
        assert os.lstat(left / name).st_mode == os.lstat(right / name).st_mode
    for name in comparison.common_dirs:
        _assert_same_tree(left / name, right / name)


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_archive_round_trip(mounted: Path, tmp_path: Path) -> None:
    source = _tree(tmp_path)
    run("rsync", "-a", f"{source}/", f"{mounted / 'copy'}/")
    _assert_same_tree(source, mounted / "copy")
    assert os.stat(mounted / "copy" / "blob.bin").st_mtime_ns == 1_500_000_000_000_000_000
    # A second run finds nothing to transfer: sizes and mtimes match exactly.
    stats = run("rsync", "-a", "--stats", f"{source}/", f"{mounted / 'copy'}/")
    assert "Number of regular files transferred: 0" in stats
    run("rsync", "-a", "--delete", f"{mounted / 'copy'}/", f"{tmp_path / 'back'}/")
    _assert_same_tree(source, tmp_path / "back")


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_init_commit_clone(mounted: Path, tmp_path: Path) -> None:
    repo = mounted / "repo"
    identity = ["-c", "user.name=ringfs", "-c", "user.email=ringfs@localhost"]
    run("git", "init", "-q", str(repo))
    source = _tree(tmp_path)
    shutil.copytree(source, repo / "tree", symlinks=True)
    run("git", "-C", str(repo), "add", "-A")
    run("git", *identity, "-C", str(repo), "commit", "-q", "-m", "first")
    (repo / "tree" / "pkg" / "module.py").write_text("print('changed')\n")
    run("git", *identity, "-C", str(repo), "commit", "-q", "-am", "second")
    assert run("git", "-C", str(repo), "status", "--porcelain") == ""
    assert run("git", "-C", str(repo), "fsck", "--strict").strip() == ""
    assert len(run("git", "-C", str(repo), "log", "--oneline").splitlines()) == 2
    run("git", "clone", "-q", str(repo), str(tmp_path / "clone"))
    _assert_same_tree(repo / "tree", tmp_path / "clone" / "tree")
    run("git", "gc", "-q", cwd=repo)
    run("git", "-C", str(repo), "fsck", "--strict")
