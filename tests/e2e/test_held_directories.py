"""Directories a mount made are held by it, and it answers changes of names there before the
leader applies them. Two real mounts: another mount's change in a held directory waits until
the holder sent what it answered and gave the directory back, so it sees every one of those
changes; a holder that dies loses its directories within `HOLD_EXPIRY`, and every file it closed
is there, byte for byte."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ringfs.node.meta.delegations import HOLD_EXPIRY
from tests.e2e.conftest import Mount
from tests.e2e.test_coherent_cache import seen_within

pytestmark = pytest.mark.fuse


def content(i: int) -> bytes:
    return f"file {i}\n".encode() * (i + 1)


def test_a_change_from_another_mount_sees_everything_the_holder_answered(
    mount_factory: Callable[..., Mount],
) -> None:
    a, b = mount_factory("a").path, mount_factory("b").path
    (a / "d").mkdir()
    for i in range(40):
        (a / "d" / f"f{i}").write_bytes(content(i))
    for i in range(0, 40, 2):
        os.rename(a / "d" / f"f{i}", a / "d" / f"g{i}")  # answered by mount a, not yet sent
    for i in range(1, 40, 4):
        os.unlink(a / "d" / f"f{i}")
    (a / "d" / "sub").mkdir()
    (a / "d" / "sub" / "deep").write_bytes(b"deep")
    expected = {
        **{f"g{i}": content(i) for i in range(0, 40, 2)},
        **{f"f{i}": content(i) for i in range(3, 40, 4)},
    }
    # Mount b's create in a's directory is held off until a gave back the directory.
    (b / "d" / "from-b").write_bytes(b"b was here")
    names = set(os.listdir(b / "d"))
    assert names == set(expected) | {"sub", "from-b"}
    for name, data in expected.items():
        assert (b / "d" / name).read_bytes() == data, name
    assert (b / "d" / "sub" / "deep").read_bytes() == b"deep"
    # Mount b's change reaches mount a as any other change does.
    seen_within(lambda: os.path.exists(a / "d" / "from-b"), "a name made in a recalled directory")
    assert (a / "d" / "from-b").read_bytes() == b"b was here"
    # Mount a goes on changing the directory, through the leader now.
    os.rename(a / "d" / "g0", a / "d" / "h0")
    seen_within(lambda: os.path.exists(b / "d" / "h0"), "a rename after the recall")
    assert (b / "d" / "h0").read_bytes() == content(0)
    # A directory a holds still (sub) is recalled as well when b removes what is in it.
    os.unlink(b / "d" / "sub" / "deep")
    os.rmdir(b / "d" / "sub")
    seen_within(lambda: not os.path.exists(a / "d" / "sub"), "a held directory removed")


def test_a_dead_holder_loses_its_directories_and_keeps_what_it_closed(
    mount_factory: Callable[..., Mount],
) -> None:
    a, b = mount_factory("a"), mount_factory("b")
    (a.path / "d").mkdir()
    (a.path / "e").mkdir()
    for i in range(30):
        (a.path / "d" / f"f{i}").write_bytes(content(i))  # each close is durable
    a.process.kill()  # no unmount: it gives nothing back
    a.process.wait()
    subprocess.run(["fusermount3", "-uz", str(a.path)], check=False, capture_output=True)
    start = time.monotonic()
    (b.path / "d" / "after").write_bytes(b"after")
    waited = time.monotonic() - start
    print(f"a create in a dead mount's directory waited {waited:.2f} s")
    assert waited < HOLD_EXPIRY + 3
    # Everything it held went at once: its other directory does not make b wait again.
    start = time.monotonic()
    (b.path / "e" / "after").write_bytes(b"after")
    waited = time.monotonic() - start
    print(f"a create in its other directory waited {waited:.2f} s")
    assert waited < HOLD_EXPIRY / 2
    assert sorted(os.listdir(b.path / "d")) == sorted([f"f{i}" for i in range(30)] + ["after"])
    for i in range(30):
        assert (b.path / "d" / f"f{i}").read_bytes() == content(i)


def test_names_made_by_a_mount_are_durable_at_fsyncdir(
    mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    a, b = mount_factory("a"), mount_factory("b")
    (a.path / "d").mkdir()
    for i in range(10):
        os.mkdir(a.path / "d" / f"sub{i}")
    os.rename(a.path / "d" / "sub0", a.path / "d" / "renamed")
    fd = os.open(a.path / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    a.process.kill()
    a.process.wait()
    subprocess.run(["fusermount3", "-uz", str(a.path)], check=False, capture_output=True)
    expected = {f"sub{i}" for i in range(1, 10)} | {"renamed"}
    assert set(os.listdir(b.path / "d")) == expected
