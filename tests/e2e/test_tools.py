"""What users do: cp, ls, mkdir -p, mv, rm -r, tar, ln on a real mount of a 3-node cluster."""

from __future__ import annotations

import filecmp
import os
import stat
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.fuse

MiB = 1024 * 1024


def run(*argv: str, cwd: Path | None = None) -> str:
    result = subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True)
    return result.stdout


def random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            piece = os.urandom(min(remaining, 4 * MiB))
            out.write(piece)
            remaining -= len(piece)
    return path


def test_cp_large_file_in_and_out(mounted: Path, tmp_path: Path) -> None:
    source = random_file(tmp_path / "source.bin", 100 * MiB + 12345)
    run("cp", str(source), str(mounted / "copy.bin"))
    run("cp", str(mounted / "copy.bin"), str(tmp_path / "back.bin"))
    assert filecmp.cmp(source, tmp_path / "back.bin", shallow=False)
    assert (mounted / "copy.bin").stat().st_size == source.stat().st_size


def test_ls_shows_sizes_and_modes(mounted: Path) -> None:
    (mounted / "small").write_bytes(b"x" * 1234)
    os.chmod(mounted / "small", 0o640)
    (mounted / "dir").mkdir(mode=0o751)
    os.chmod(mounted / "dir", 0o751)
    lines = {
        line.split()[-1]: line.split()
        for line in run("ls", "-l", str(mounted)).splitlines()
        if not line.startswith("total")
    }
    assert lines["small"][0] == "-rw-r-----"
    assert lines["small"][4] == "1234"
    assert lines["dir"][0] == "drwxr-x--x"
    assert lines["dir"][1] == "2"


def test_mkdir_p_mv_and_rm_r(mounted: Path) -> None:
    deep = mounted / "a" / "b" / "c" / "d" / "e"
    run("mkdir", "-p", str(deep))
    (deep / "leaf").write_text("leaf")
    run("mv", str(mounted / "a" / "b"), str(mounted / "moved"))
    assert (mounted / "moved" / "c" / "d" / "e" / "leaf").read_text() == "leaf"
    assert not (mounted / "a" / "b").exists()
    run("mv", str(mounted / "moved" / "c" / "d" / "e" / "leaf"), str(mounted / "leaf2"))
    assert (mounted / "leaf2").read_text() == "leaf"
    assert os.stat(mounted / "a").st_nlink == 2
    run("rm", "-r", str(mounted / "a"), str(mounted / "moved"))
    assert sorted(os.listdir(mounted)) == ["leaf2"]


def test_tar_round_trip(mounted: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    random_file(tree / "sub" / "data.bin", 5 * MiB + 7)
    (tree / "sub" / "deeper" / "note.txt").write_text("note\n")
    os.symlink("sub/deeper/note.txt", tree / "link")
    os.chmod(tree / "sub" / "data.bin", 0o600)
    run("tar", "-cf", str(tmp_path / "tree.tar"), "-C", str(tmp_path), "tree")
    run("tar", "-xpf", str(tmp_path / "tree.tar"), "-C", str(mounted))
    extracted = mounted / "tree"
    assert filecmp.cmp(tree / "sub" / "data.bin", extracted / "sub" / "data.bin", shallow=False)
    assert stat.S_IMODE(os.stat(extracted / "sub" / "data.bin").st_mode) == 0o600
    assert os.readlink(extracted / "link") == "sub/deeper/note.txt"
    assert (extracted / "link").read_text() == "note\n"
    # ... and back out again: a tar made on the mount extracts to the same tree.
    run("tar", "-cf", str(tmp_path / "again.tar"), "-C", str(mounted), "tree")
    out = tmp_path / "out"
    out.mkdir()
    run("tar", "-xpf", str(tmp_path / "again.tar"), "-C", str(out))
    comparison = filecmp.dircmp(tree, out / "tree")
    assert (comparison.diff_files, comparison.left_only, comparison.right_only) == ([], [], [])
    assert filecmp.cmp(tree / "sub" / "data.bin", out / "tree" / "sub" / "data.bin", shallow=False)


def test_symlinks_and_hard_links(mounted: Path) -> None:
    (mounted / "target").write_text("content")
    run("ln", "-s", "target", str(mounted / "soft"))
    run("ln", str(mounted / "target"), str(mounted / "hard"))
    assert os.readlink(mounted / "soft") == "target"
    assert (mounted / "soft").read_text() == "content"
    assert os.stat(mounted / "target").st_nlink == 2
    assert os.stat(mounted / "hard").st_ino == os.stat(mounted / "target").st_ino
    os.unlink(mounted / "target")
    assert os.stat(mounted / "hard").st_nlink == 1
    assert (mounted / "hard").read_text() == "content"
    assert not (mounted / "soft").exists()  # dangling now
    assert os.path.islink(mounted / "soft")


def test_unlinked_file_stays_readable_through_open_handles(mounted: Path) -> None:
    path = mounted / "doomed"
    path.write_bytes(b"still here" * 1000)
    with open(path, "rb") as handle:
        os.link(path, mounted / "other")
        os.unlink(path)
        os.unlink(mounted / "other")
        assert os.fstat(handle.fileno()).st_nlink == 0
        assert handle.read() == b"still here" * 1000
    assert os.listdir(mounted) == []
