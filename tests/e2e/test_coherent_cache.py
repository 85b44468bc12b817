"""Two real mounts, one changing names, attributes, xattrs and content while the other looks:
what the other mount cached (its own cache and its kernel's) follows within the invalidation
delay: milliseconds, and here at most half the lease (`ringfs.fs.metacache.LEASE`, the bound if
the feed stops) and half the kernel's cache timeouts, so neither running out is what shows it."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ringfs.fs.metacache import LEASE
from ringfs.fs.operations import CacheTimes
from tests.e2e.conftest import Mount

pytestmark = pytest.mark.fuse


@pytest.fixture
def two(mount_factory: Callable[..., Mount]) -> tuple[Path, Path]:
    return mount_factory("a").path, mount_factory("b").path


BOUND = min(LEASE, CacheTimes().attr_timeout, CacheTimes().entry_timeout) / 2


def seen_within(check: Callable[[], bool], what: str) -> float:
    """Seconds until `check` holds; fails if that takes longer than `BOUND`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > BOUND:
            raise AssertionError(f"{what}: not seen after {BOUND} s")
        time.sleep(0.002)
    delay = time.monotonic() - start
    print(f"{what}: seen after {delay * 1000:.1f} ms")
    return delay


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def exists(path: Path) -> bool:
    return os.path.lexists(path)


def test_attributes_changed_by_another_mount(two: tuple[Path, Path]) -> None:
    a, b = two
    (b / "f").write_bytes(b"12345")
    assert mode_of(a / "f") == 0o644  # now cached in mount a and in its kernel
    os.chmod(b / "f", 0o600)
    seen_within(lambda: mode_of(a / "f") == 0o600, "chmod")
    with open(b / "f", "ab") as more:
        more.write(b"678")
    seen_within(lambda: os.stat(a / "f").st_size == 8, "size after an append and close")
    assert (a / "f").read_bytes() == b"12345678"  # close-to-open, byte for byte


@pytest.mark.parametrize("size", [3000, 300_000], ids=["inline", "blocks"])
def test_a_file_read_again_shows_another_mounts_rewrite(two: tuple[Path, Path], size: int) -> None:
    """Mount a keeps the chunk map of a file it read, and opens it again with that map's
    version: a rewrite by mount b of the same size, with the same first bytes, is read at
    once, byte for byte (close-to-open), and so is a's own rewrite after it, in b."""
    a, b = two
    first = os.urandom(size)
    (a / "f").write_bytes(first)
    assert (a / "f").read_bytes() == first
    second = first[:100] + os.urandom(size - 100)
    with open(b / "f", "r+b") as f:
        f.write(second)
    assert (a / "f").read_bytes() == second
    assert (a / "f").read_bytes() == second
    third = os.urandom(size)
    with open(a / "f", "r+b") as f:
        f.write(third)
    assert (b / "f").read_bytes() == third
    assert (a / "f").read_bytes() == third


def test_random_reads_show_another_mounts_rewrite(two: tuple[Path, Path]) -> None:
    """Reads at random places ask the nodes for only their bytes: after the other mount's
    close, an open reads its new bytes there, byte for byte."""
    a, b = two
    MiB = 1024 * 1024
    content = bytearray(os.urandom(10 * MiB))
    (b / "f").write_bytes(content)
    places = [9 * MiB + 12_345, 1 * MiB + 100, 6 * MiB - 2000, 500]  # each over 4 MiB from the last

    def random_reads() -> list[bytes]:
        with open(a / "f", "rb", buffering=0) as file:
            return [os.pread(file.fileno(), 4096, place) for place in places]

    assert random_reads() == [bytes(content[p : p + 4096]) for p in places]
    with open(b / "f", "r+b") as file:
        for place in places:
            new = os.urandom(4096)
            file.seek(place)
            file.write(new)
            content[place : place + 4096] = new
    assert random_reads() == [bytes(content[p : p + 4096]) for p in places]
    assert (a / "f").read_bytes() == content


@pytest.mark.parametrize("size", [3000, 300_000])
def test_files_rewritten_in_turn_are_read_at_once_by_the_other_mount(
    two: tuple[Path, Path], size: int
) -> None:
    """Both mounts keep the maps of the files and watch them (they open them again without
    asking the leader); each rewrite's close waits until the other mount heard of it, so the
    open right after it, there, reads the new bytes: close-to-open, byte for byte, from the
    kernel's page cache too."""
    a, b = two
    names = [f"f{i}" for i in range(4)]
    for name in names:
        (a / name).write_bytes(os.urandom(size))
        (b / name).read_bytes()
    for turn in range(8):
        writer, reader = (a, b) if turn % 2 else (b, a)
        for name in names:
            data = os.urandom(size)
            with open(writer / name, "r+b") as f:
                f.write(data)
            assert (reader / name).read_bytes() == data
            assert (writer / name).read_bytes() == data


def test_names_changed_by_another_mount(two: tuple[Path, Path]) -> None:
    a, b = two
    (b / "d").mkdir()
    (b / "d" / "old").write_bytes(b"x")
    assert sorted(os.listdir(a / "d")) == ["old"]
    assert os.stat(a / "d" / "old").st_size == 1
    os.rename(b / "d" / "old", b / "d" / "new")
    seen_within(lambda: not exists(a / "d" / "old"), "rename: the old name gone")
    assert (a / "d" / "new").read_bytes() == b"x"
    (b / "d" / "new").unlink()
    seen_within(lambda: not exists(a / "d" / "new"), "unlink")
    assert os.listdir(a / "d") == []
    (b / "d" / "new").write_bytes(b"again")
    seen_within(lambda: exists(a / "d" / "new"), "create under a name just removed")
    assert (a / "d" / "new").read_bytes() == b"again"


def test_a_file_replaced_by_rename_is_the_new_one(two: tuple[Path, Path]) -> None:
    """What editors and git do: write a new file, rename it over the old one."""
    a, b = two
    (b / "config").write_bytes(b"version 1\n")
    assert (a / "config").read_bytes() == b"version 1\n"
    old_ino = os.stat(a / "config").st_ino
    (b / "config.tmp").write_bytes(b"version 2, longer\n")
    os.rename(b / "config.tmp", b / "config")
    seen_within(lambda: os.stat(a / "config").st_ino != old_ino, "rename over a name")
    assert (a / "config").read_bytes() == b"version 2, longer\n"


def test_xattrs_set_by_another_mount(two: tuple[Path, Path]) -> None:
    a, b = two
    (b / "f").write_bytes(b"")
    assert os.listxattr(a / "f") == []  # mount a now knows it has none
    with pytest.raises(OSError, match="No data available"):
        os.getxattr(a / "f", "user.color")
    os.setxattr(b / "f", "user.color", b"blue")

    def has_color() -> bool:
        try:
            return os.getxattr(a / "f", "user.color") == b"blue"
        except OSError:
            return False

    seen_within(has_color, "setxattr")
    assert os.listxattr(a / "f") == ["user.color"]


def test_a_mount_sees_its_own_changes_at_once(mounted: Path) -> None:
    """No waiting for the feed: what a mount changed, it reads back on the next call."""
    for i in range(30):
        path = mounted / f"f{i}"
        path.write_bytes(b"x" * i)
        assert os.stat(path).st_size == i
        os.chmod(path, 0o600)
        assert mode_of(path) == 0o600
        os.setxattr(path, "user.n", str(i).encode())
        assert os.getxattr(path, "user.n") == str(i).encode()
        os.rename(path, mounted / f"g{i}")
        assert not exists(path)
        assert os.stat(mounted / f"g{i}").st_size == i
        os.unlink(mounted / f"g{i}")
        assert not exists(mounted / f"g{i}")
    assert os.listdir(mounted) == []


def test_a_name_another_mount_creates_in_a_directory_this_one_made(
    two: tuple[Path, Path],
) -> None:
    """Mount a made the directory, so it knows every name in it and answers for missing ones
    itself; a name mount b adds must still show up."""
    a, b = two
    (a / "mine").mkdir()
    (a / "mine" / "first").write_bytes(b"1")
    assert not exists(a / "mine" / "new")  # answered by mount a alone
    (b / "mine" / "new").write_bytes(b"from b")
    seen_within(lambda: exists(a / "mine" / "new"), "a name added in a directory a made")
    assert (a / "mine" / "new").read_bytes() == b"from b"
    os.rename(b / "mine" / "first", b / "mine" / "moved")
    # Both names within the delay, not at one instant: the kernel forgets the old one in a
    # worker thread, while the new one is looked up at once.
    seen_within(
        lambda: exists(a / "mine" / "moved") and not exists(a / "mine" / "first"),
        "a rename in a directory a made",
    )


def test_a_directory_changed_here_shows_what_another_mount_reads(two: tuple[Path, Path]) -> None:
    """The mount works out its directories' new times and link counts after its own creates
    and unlinks instead of asking: they must be what the meta group holds."""
    a, b = two
    (a / "d").mkdir()

    def seen(root: Path) -> tuple[int, int, int]:
        st = os.stat(root / "d")
        return st.st_mtime_ns, st.st_ctime_ns, st.st_nlink

    def agrees(here: tuple[int, int, int], what: str) -> None:
        """Mount b, told of the change, ends up reading what mount a showed at once."""
        seen_within(lambda: seen(b) == here, what)

    for i in range(5):
        os.stat(a / "d")  # cached in mount a before each change
        (a / "d" / f"f{i}").write_bytes(b"x")
        os.mkdir(a / "d" / f"sub{i}")
        agrees(seen(a), "a directory after a create and a mkdir")  # at once, worked out by a
        (a / "d" / f"f{i}").unlink()
        agrees(seen(a), "a directory after an unlink")
    assert seen(a)[2] == 7


def listing(directory: Path) -> dict[str, int] | None:
    """What `ls -l` shows: each name with its size, from one readdir and the stats after it;
    None if a name went between the two (a change from the other mount arriving meanwhile:
    `ls` would print "cannot access"), so that `seen_within` looks again."""
    with os.scandir(directory) as entries:
        try:
            return {entry.name: entry.stat(follow_symlinks=False).st_size for entry in entries}
        except FileNotFoundError:
            return None


@pytest.mark.parametrize("maker", ["a", "b"])
def test_a_directory_listed_from_the_cache_follows_another_mount(
    two: tuple[Path, Path], maker: str
) -> None:
    """Mount a lists a directory whole once (made by a, or listed by a from the leader); then
    it lists it from its cache, which must follow every change mount b makes in it."""
    a, b = two
    made_by = a if maker == "a" else b
    (made_by / "d").mkdir()
    for name in ("one", "two", "three"):
        (made_by / "d" / name).write_bytes(name.encode())
    want = {"one": 3, "two": 3, "three": 5}
    assert listing(a / "d") == want
    assert listing(a / "d") == want  # now from mount a's cache, if it has all of it
    (b / "d" / "four").write_bytes(b"4444")
    want["four"] = 4
    seen_within(lambda: listing(a / "d") == want, "a name added")
    (b / "d" / "one").unlink()
    del want["one"]
    seen_within(lambda: listing(a / "d") == want, "a name removed")
    os.rename(b / "d" / "two", b / "d" / "deux")
    want["deux"] = want.pop("two")
    seen_within(lambda: listing(a / "d") == want, "a name renamed")
    with open(b / "d" / "three", "ab") as more:
        more.write(b" and more")
    want["three"] = 14
    seen_within(lambda: listing(a / "d") == want, "a size changed")
    assert (a / "d" / "three").read_bytes() == b"three and more"
