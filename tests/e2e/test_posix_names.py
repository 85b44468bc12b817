"""POSIX conformance of the namespace: the same calls on the mount and on a local directory.

Every check runs one operation on a fresh ringfs mount and on a directory of the local disk
(ext4) and asserts that both end the same way: the same errno, or the same result (stat fields
that must agree, contents, sorted listings). Where the answer is fixed by POSIX or Linux, the
local side is also checked against it, so a wrong test cannot pass by being wrong twice.

This module holds the shared helpers (`outcome`, `Pair`, `tree`); `test_posix_files.py` and
`test_posix_perms.py` import them.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import socket
import stat
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.fuse

MiB = 1024 * 1024
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

Outcome = tuple[str, Any]


# -- helpers shared by the test_posix_* modules ---------------------------------------------


def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Outcome:
    """("ok", result) or ("err", errno name): how a call ended, comparable across filesystems."""
    try:
        return ("ok", fn(*args, **kwargs))
    except OSError as exc:
        return ("err", errno.errorcode.get(exc.errno or 0, exc.errno))


def ok(value: Any = None) -> Outcome:
    return ("ok", value)


def err(code: int) -> Outcome:
    return ("err", errno.errorcode[code])


@dataclass
class Pair:
    """A local directory and a ringfs mount that every check runs against."""

    local: Path
    mount: Path

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Set-up: the same call on both sides; it must succeed. str arguments are paths
        under the root (bytes ones, such as symlink targets, are passed as they are)."""
        for root in (self.local, self.mount):
            fn(*_paths(root, args), **kwargs)

    def check(
        self, fn: Callable[..., Any], *args: Any, expect: Outcome | None = None, **kwargs: Any
    ) -> Outcome:
        """The same call on both sides must end the same way; str arguments are paths."""
        want = outcome(fn, *_paths(self.local, args), **kwargs)
        got = outcome(fn, *_paths(self.mount, args), **kwargs)
        return compare(f"{_name(fn)}{tuple(args)!r}", want, got, expect)

    def same(self, fn: Callable[[Path], Any], expect: Outcome | None = None) -> Outcome:
        """`fn(root)` on both sides must end the same way."""
        return compare(_name(fn), outcome(fn, self.local), outcome(fn, self.mount), expect)


def compare(what: str, want: Outcome, got: Outcome, expect: Outcome | None) -> Outcome:
    what = _short(what)
    if expect is not None:
        assert want == expect, f"{what}: local gives {_short(want)}, expected {_short(expect)}"
    assert got == want, f"{what}: local {_short(want)}, ringfs {_short(got)}"
    return got


def _short(value: object, limit: int = 400) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def _paths(root: Path, args: tuple[Any, ...]) -> list[Any]:
    # Joined by hand: pathlib would drop the "." in "dir/.".
    return [f"{root}/{arg}" if isinstance(arg, str) else arg for arg in args]


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", repr(fn))


def make_pair(mounted: Path, tmp_path: Path) -> Pair:
    local = tmp_path / "local"
    local.mkdir()
    local.chmod(0o755)  # as the mount's root, whatever the umask
    return Pair(local, mounted)


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """Expected modes below assume umask 022; set it for the test and put it back."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def assert_quiet_logs(directory: Path) -> None:
    """No node or mount logged at WARNING or above (none of these checks should cause it)."""
    loud = [
        f"{log.name}: {line}"
        for log in sorted(directory.glob("*.log"))
        for line in log.read_text(errors="replace").splitlines()
        if any(f" {level} " in line for level in ("WARNING", "ERROR", "CRITICAL"))
    ]
    assert not loud, "unexpected log records:\n" + "\n".join(loud[:20])


@pytest.fixture
def pair(mounted: Path, tmp_path: Path) -> Iterator[Pair]:
    with umask(0o022):
        yield make_pair(mounted, tmp_path)
    assert_quiet_logs(tmp_path)


def view(st: os.stat_result) -> tuple[Any, ...]:
    """The stat fields that must agree between ringfs and a local filesystem."""
    size = st.st_size if not stat.S_ISDIR(st.st_mode) else "dir"
    return (stat.filemode(st.st_mode), st.st_nlink, size, st.st_uid, st.st_gid, st.st_rdev)


def stat_of(path: str) -> tuple[Any, ...]:
    return view(os.stat(path))


def lstat_of(path: str) -> tuple[Any, ...]:
    return view(os.lstat(path))


def content(path: str | Path) -> Any:
    """A file's bytes, or for a big file its size and digest (keeps failure output short)."""
    with open(path, "rb") as handle:
        data = handle.read()
    return data if len(data) <= 256 else ("sha256", len(data), hashlib.sha256(data).hexdigest())


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def listing(path: str) -> list[str]:
    return sorted(os.listdir(path))


def opened(path: str, flags: int, mode: int = 0o644) -> str:
    """open(2) then close: the outcome of an open without leaking a descriptor."""
    os.close(os.open(path, flags, mode))
    return "opened"


def tree(root: Path) -> list[tuple[Any, ...]]:
    """Every entry under `root`: name, the stat `view`, and the content or link target."""
    entries: list[tuple[Any, ...]] = [(".", *view(os.lstat(root)), None)]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                data = content(path)
            elif stat.S_ISLNK(st.st_mode):
                data = os.readlink(path)
            else:
                data = None
            entries.append((os.path.relpath(path, root), *view(st), data))
    return sorted(entries)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
]


def renameat2(old: str, new: str, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), old)


# -- names and lookups -----------------------------------------------------------------------


def test_missing_paths_and_files_used_as_directories(pair: Pair) -> None:
    pair.run(write, "file", b"data")
    pair.run(os.mkdir, "dir")
    pair.run(write, "dir/inner", b"inner")
    creat = os.O_CREAT | os.O_WRONLY

    enoent: list[tuple[Any, ...]] = [
        (stat_of, "missing"), (lstat_of, "missing/deeper"), (opened, "missing", os.O_RDONLY),
        (listing, "missing"), (os.unlink, "missing"), (os.rmdir, "missing"),
        (os.rename, "missing", "other"), (os.mkdir, "missing/sub"), (opened, "missing/new", creat),
        (os.readlink, "missing"), (os.chmod, "missing", 0o600), (os.link, "missing", "new"),
        (os.truncate, "missing", 0), (os.rename, "file", "missing/file"),
        (os.symlink, b"target", "missing/link"),
    ]  # fmt: skip
    for call in enoent:
        pair.check(*call, expect=err(errno.ENOENT))

    enotdir: list[tuple[Any, ...]] = [
        (stat_of, "file/x"), (opened, "file/x", creat), (os.mkdir, "file/sub"),
        (listing, "file"), (os.rmdir, "file"), (os.rename, "file/x", "y"),
        (os.rename, "dir", "file/x"), (os.symlink, b"t", "file/link"), (stat_of, "file/"),
        (opened, "file", os.O_RDONLY | os.O_DIRECTORY), (os.unlink, "file/"),
    ]  # fmt: skip
    for call in enotdir:
        pair.check(*call, expect=err(errno.ENOTDIR))

    eexist: list[tuple[Any, ...]] = [
        (os.mkdir, "dir"), (os.mkdir, "file"), (os.mkdir, "dir/inner"),
        (os.symlink, b"x", "file"), (os.link, "file", "dir/inner"), (os.mknod, "file"),
        (opened, "file", creat | os.O_EXCL), (os.mkfifo, "dir"),
    ]  # fmt: skip
    for call in eexist:
        pair.check(*call, expect=err(errno.EEXIST))

    pair.check(os.rmdir, "dir", expect=err(errno.ENOTEMPTY))
    pair.check(os.rmdir, "dir/.", expect=err(errno.EINVAL))
    pair.check(os.rmdir, "dir/..", expect=err(errno.ENOTEMPTY))
    pair.check(os.unlink, "dir", expect=err(errno.EISDIR))
    pair.check(os.unlink, "dir/.", expect=err(errno.EISDIR))
    pair.check(os.rmdir, "dir/inner", expect=err(errno.ENOTDIR))
    pair.check(os.unlink, "dir/inner", expect=ok())
    pair.check(os.rmdir, "dir", expect=ok())
    pair.check(os.mkdir, "sticky", 0o1777, expect=ok())
    pair.check(stat_of, "sticky", expect=ok(("drwxr-xr-t", 2, "dir", 0, 0, 0)))
    pair.check(os.mkdir, "setid", 0o6777, expect=ok())  # set-id bits are not taken from mode
    pair.check(stat_of, "setid", expect=ok(("drwxr-xr-x", 2, "dir", 0, 0, 0)))
    pair.check(os.mkdir, "trailing/", expect=ok())
    pair.check(stat_of, "trailing/")
    pair.check(listing, "", expect=ok(["file", "setid", "sticky", "trailing"]))
    assert tree(pair.mount) == tree(pair.local)


def test_name_length_limits(pair: Pair) -> None:
    pair.run(write, "file", b"data")
    pair.run(write, "other", b"other")
    pair.run(os.mkdir, "dir")
    long_ok = "\u00e9" * 127 + "x"  # 255 bytes in UTF-8
    assert len(os.fsencode(long_ok)) == 255

    creat = os.O_CREAT | os.O_WRONLY

    def named(n: int) -> list[tuple[Any, ...]]:
        return [
            (opened, "a" * n, creat),
            (os.mkdir, "dir/" + "b" * n),
            (os.symlink, b"file", "dir/" + "c" * n),
            (os.link, "file", "d" * n),
            (os.mknod, "dir/" + "e" * n),
            (os.mkfifo, "g" * n),
        ]

    for call in named(255):
        pair.check(*call, expect=ok("opened" if call[0] is opened else None))
    for call in named(256):
        pair.check(*call, expect=err(errno.ENAMETOOLONG))
    pair.check(opened, long_ok, creat, expect=ok("opened"))
    pair.check(opened, long_ok + "x", creat, expect=err(errno.ENAMETOOLONG))

    n255, n256 = "f" * 255, "f" * 256
    pair.check(os.rename, "other", n255, expect=ok())
    pair.check(os.rename, n255, n256, expect=err(errno.ENAMETOOLONG))
    pair.check(os.rename, n256, "x", expect=err(errno.ENAMETOOLONG))
    pair.check(stat_of, n255)
    pair.check(content, n255, expect=ok(b"other"))
    too_long: list[tuple[Any, ...]] = [
        (stat_of, n256), (lstat_of, "dir/" + n256), (opened, n256, os.O_RDONLY),
        (os.unlink, n256), (os.rmdir, n256), (os.mkdir, n256), (listing, n256),
    ]  # fmt: skip
    for call in too_long:
        pair.check(*call, expect=err(errno.ENAMETOOLONG))
    pair.check(os.readlink, "dir/" + "c" * 255, expect=ok("file"))
    pair.check(listing, "")
    pair.check(listing, "dir")
    assert tree(pair.mount) == tree(pair.local)


def test_paths_near_path_max(pair: Pair) -> None:
    """Relative to a directory descriptor, so both sides pass strings of the same length."""
    fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY) for root in (pair.local, pair.mount)]
    try:

        def both(fn: Callable[[int], Any], expect: Outcome) -> None:
            compare(_name(fn), outcome(fn, fds[0]), outcome(fn, fds[1]), expect)

        component = "p" * 250
        deep = "/".join([component] * 16)
        assert len(deep) == 4015

        def mkdir(path: str) -> Callable[[int], Any]:
            return lambda fd: os.mkdir(path, dir_fd=fd)

        for depth in range(1, 17):
            both(mkdir("/".join([component] * depth)), ok())
        longest = deep + "/" + "f" * (4095 - len(deep) - 1)
        assert len(longest) == 4095  # PATH_MAX less the NUL
        creat = os.O_CREAT | os.O_WRONLY

        def create(path: str) -> Callable[[int], Any]:
            return lambda fd: os.close(os.open(path, creat, 0o644, dir_fd=fd))

        both(create(longest), ok())
        both(lambda fd: view(os.stat(longest, dir_fd=fd)), ok(("-rw-r--r--", 1, 0, 0, 0, 0)))
        both(lambda fd: list_at(deep, fd), ok([longest[-79:]]))
        both(create(longest + "g"), err(errno.ENAMETOOLONG))
        both(lambda fd: os.stat(longest + "g", dir_fd=fd), err(errno.ENAMETOOLONG))
        both(lambda fd: os.mkdir(deep + "/" + "d" * 80, dir_fd=fd), err(errno.ENAMETOOLONG))
        both(lambda fd: os.stat("./" * 2100 + component, dir_fd=fd), err(errno.ENAMETOOLONG))
        both(lambda fd: os.unlink(longest, dir_fd=fd), ok())
    finally:
        for fd in fds:
            os.close(fd)
    assert tree(pair.mount) == tree(pair.local)


def list_at(path: str, dir_fd: int) -> list[str]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dir_fd)
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


# -- rename ----------------------------------------------------------------------------------


def test_rename(pair: Pair) -> None:
    for name, data in [("a", b"A"), ("b", b"B"), ("c", b"C")]:
        pair.run(write, name, data)
    for directory in [
        "moveme",
        "empty1",
        "empty2",
        "full",
        "tree/sub/deeper",
        "p1/child",
        "p1/empty",
        "p2",
    ]:
        pair.run(os.makedirs, directory)
    pair.run(write, "moveme/file", b"moved")
    pair.run(write, "full/x", b"x")

    pair.check(os.rename, "a", "a2", expect=ok())  # within a directory
    pair.check(os.rename, "a2", "p2/a3", expect=ok())  # across directories
    pair.check(content, "p2/a3", expect=ok(b"A"))
    pair.check(os.rename, "b", "c", expect=ok())  # replacing a file
    pair.check(content, "c", expect=ok(b"B"))
    pair.check(stat_of, "b", expect=err(errno.ENOENT))
    pair.check(os.rename, "moveme", "empty1", expect=ok())  # directory over an empty one
    pair.check(listing, "empty1", expect=ok(["file"]))
    pair.check(os.rename, "empty2", "full", expect=err(errno.ENOTEMPTY))
    pair.check(os.rename, "c", "full", expect=err(errno.EISDIR))
    pair.check(os.rename, "full", "c", expect=err(errno.ENOTDIR))
    pair.check(os.rename, "tree", "tree/sub/x", expect=err(errno.EINVAL))
    pair.check(os.rename, "tree", "tree/sub", expect=err(errno.EINVAL))
    pair.check(os.rename, "tree/sub", "tree/sub/deeper/x", expect=err(errno.EINVAL))
    pair.check(os.rename, "tree/sub", "tree", expect=err(errno.ENOTEMPTY))
    pair.check(os.rename, "c", "c/", expect=err(errno.ENOTDIR))
    pair.check(os.rename, "tree/.", "elsewhere", expect=err(errno.EBUSY))
    pair.check(os.rename, "c", "c", expect=ok())

    # Two names of one inode: rename(2) does nothing, both names stay.
    pair.run(os.link, "c", "c_link")
    pair.check(os.rename, "c", "c_link", expect=ok())
    pair.check(os.rename, "c_link", "c", expect=ok())
    pair.check(stat_of, "c", expect=ok(("-rw-r--r--", 2, 1, 0, 0, 0)))
    pair.check(stat_of, "c_link", expect=ok(("-rw-r--r--", 2, 1, 0, 0, 0)))

    # Replacing one of two names of a file leaves the other with one link.
    pair.check(os.rename, "p2/a3", "c_link", expect=ok())
    pair.check(stat_of, "c", expect=ok(("-rw-r--r--", 1, 1, 0, 0, 0)))
    pair.check(content, "c_link", expect=ok(b"A"))

    def replace_open_file(root: Path) -> tuple[Any, ...]:
        write(f"{root}/victim", b"victim data")
        write(f"{root}/winner", b"winner")
        fd = os.open(root / "victim", os.O_RDONLY)
        try:
            os.rename(root / "winner", root / "victim")
            return os.fstat(fd).st_nlink, os.pread(fd, 100, 0), content(root / "victim")
        finally:
            os.close(fd)

    pair.same(replace_open_file, expect=ok((0, b"victim data", b"winner")))

    # Directories moving between parents carry their ".." link with them.
    pair.check(os.rename, "p1/child", "p2/child", expect=ok())
    pair.check(lambda p: os.stat(p).st_nlink, "p1", expect=ok(3))
    pair.check(lambda p: os.stat(p).st_nlink, "p2", expect=ok(3))
    pair.check(os.rename, "p2/child", "p1/empty", expect=ok())  # over an empty dir, across
    pair.check(lambda p: os.stat(p).st_nlink, "p1", expect=ok(3))
    pair.check(lambda p: os.stat(p).st_nlink, "p2", expect=ok(2))
    pair.check(os.rename, "p1", "p2/p1", expect=ok())
    pair.check(lambda p: os.stat(p).st_nlink, "p2", expect=ok(3))
    pair.check(lambda p: os.stat(p).st_nlink, "", expect=ok(7))
    assert tree(pair.mount) == tree(pair.local)


def test_renameat2_noreplace_and_exchange(pair: Pair) -> None:
    pair.run(write, "f", b"file f")
    pair.run(write, "g", b"file g")
    pair.run(os.makedirs, "dir/inside")
    pair.run(os.makedirs, "far/sub")
    pair.run(write, "far/sub/leaf", b"leaf")

    pair.check(renameat2, "f", "g", RENAME_NOREPLACE, expect=err(errno.EEXIST))
    pair.check(renameat2, "f", "dir", RENAME_NOREPLACE, expect=err(errno.EEXIST))
    pair.check(content, "g", expect=ok(b"file g"))
    pair.check(renameat2, "f", "new", RENAME_NOREPLACE, expect=ok())
    pair.check(stat_of, "f", expect=err(errno.ENOENT))
    pair.check(content, "new", expect=ok(b"file f"))

    pair.check(renameat2, "g", "nothing", RENAME_EXCHANGE, expect=err(errno.ENOENT))
    pair.check(renameat2, "new", "g", RENAME_EXCHANGE, expect=ok())  # two files
    pair.check(content, "new", expect=ok(b"file g"))
    pair.check(content, "g", expect=ok(b"file f"))
    # A file and a directory in different parents: the kinds swap and so do the nlinks.
    pair.check(renameat2, "new", "far/sub", RENAME_EXCHANGE, expect=ok())
    pair.check(listing, "new", expect=ok(["leaf"]))
    pair.check(content, "far/sub", expect=ok(b"file g"))
    pair.check(lambda p: os.stat(p).st_nlink, "", expect=ok(5))
    pair.check(lambda p: os.stat(p).st_nlink, "far", expect=ok(2))
    pair.check(renameat2, "dir", "dir/inside", RENAME_EXCHANGE, expect=err(errno.EINVAL))
    pair.check(renameat2, "g", "dir", RENAME_NOREPLACE | RENAME_EXCHANGE, expect=err(errno.EINVAL))
    assert tree(pair.mount) == tree(pair.local)


# -- links -----------------------------------------------------------------------------------


def test_hard_links(pair: Pair) -> None:
    pair.run(write, "f", b"linked data")
    pair.run(os.mkdir, "dir")
    pair.run(os.symlink, b"f", "soft")
    nlink = lambda path: os.stat(path).st_nlink  # noqa: E731

    pair.check(os.link, "dir", "dirlink", expect=err(errno.EPERM))
    pair.check(os.link, "f", "l1", expect=ok())
    pair.check(nlink, "f", expect=ok(2))
    pair.check(os.link, "f", "dir/l2", expect=ok())
    pair.check(nlink, "l1", expect=ok(3))
    pair.check(os.link, "f", "l1", expect=err(errno.EEXIST))
    pair.check(os.link, "f", "nodir/l3", expect=err(errno.ENOENT))
    pair.check(os.unlink, "l1", expect=ok())
    pair.check(nlink, "f", expect=ok(2))
    pair.check(lambda a, b: os.link(a, b, follow_symlinks=False), "soft", "soft2", expect=ok())
    pair.check(lambda p: os.lstat(p).st_nlink, "soft", expect=ok(2))
    pair.check(os.readlink, "soft2", expect=ok("f"))

    def last_unlink_with_open_fd(root: Path) -> tuple[Any, ...]:
        fd = os.open(root / "f", os.O_RDONLY)
        try:
            os.unlink(root / "f")
            os.unlink(root / "dir/l2")
            st = os.fstat(fd)
            return st.st_nlink, st.st_size, os.pread(fd, 100, 0), sorted(os.listdir(root))
        finally:
            os.close(fd)

    pair.same(
        last_unlink_with_open_fd, expect=ok((0, 11, b"linked data", ["dir", "soft", "soft2"]))
    )

    def write_after_unlink(root: Path) -> tuple[Any, ...]:
        fd = os.open(root / "ghost", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"before")
            os.unlink(root / "ghost")
            os.write(fd, b" after")
            os.fsync(fd)
            return os.fstat(fd).st_nlink, os.fstat(fd).st_size, os.pread(fd, 100, 0)
        finally:
            os.close(fd)

    pair.same(write_after_unlink, expect=ok((0, 12, b"before after")))
    assert tree(pair.mount) == tree(pair.local)


def test_symlinks(pair: Pair) -> None:
    pair.run(write, "file", b"data")
    pair.run(os.mkdir, "dir")
    pair.run(write, "dir/inner", b"inner")

    pair.check(os.symlink, b"target", "link", expect=ok())
    pair.check(os.readlink, "link", expect=ok("target"))
    pair.check(lstat_of, "link", expect=ok(("lrwxrwxrwx", 1, 6, 0, 0, 0)))
    pair.check(stat_of, "link", expect=err(errno.ENOENT))  # dangling
    pair.run(write, "target", b"now there")
    pair.check(content, "link", expect=ok(b"now there"))
    pair.check(os.readlink, "file", expect=err(errno.EINVAL))
    pair.check(os.readlink, "dir", expect=err(errno.EINVAL))
    pair.check(os.symlink, b"x", "link", expect=err(errno.EEXIST))
    pair.check(os.symlink, b"dir", "dirlink", expect=ok())
    pair.check(content, "dirlink/inner", expect=ok(b"inner"))
    pair.check(listing, "dirlink/", expect=ok(["inner"]))
    pair.check(os.symlink, b"loop2", "loop1", expect=ok())
    pair.check(os.symlink, b"loop1", "loop2", expect=ok())
    pair.check(stat_of, "loop1", expect=err(errno.ELOOP))
    pair.check(opened, "link", os.O_RDONLY | os.O_NOFOLLOW, expect=err(errno.ELOOP))
    pair.check(lambda p: os.chown(p, 1234, 4321, follow_symlinks=False), "link", expect=ok())
    pair.check(lstat_of, "link", expect=ok(("lrwxrwxrwx", 1, 6, 1234, 4321, 0)))
    pair.check(stat_of, "link", expect=ok(("-rw-r--r--", 1, 9, 0, 0, 0)))

    target = ("t" * 200 + "/") * 21
    target = target[:4095]
    pair.check(os.symlink, target.encode(), "long", expect=ok())
    pair.check(os.readlink, "long", expect=ok(target))
    pair.check(lambda p: os.lstat(p).st_size, "long", expect=ok(4095))
    pair.check(os.symlink, target.encode() + b"t", "toolong", expect=err(errno.ENAMETOOLONG))
    pair.check(lambda p: os.symlink(b"\xff\xfe raw", os.fsencode(p)), "raw", expect=ok())
    pair.check(lambda p: os.readlink(os.fsencode(p)), "raw", expect=ok(b"\xff\xfe raw"))
    assert tree(pair.mount) == tree(pair.local)


# -- special files ---------------------------------------------------------------------------


def test_fifos_sockets_and_devices(pair: Pair) -> None:
    pair.check(os.mkfifo, "fifo", 0o640, expect=ok())
    pair.check(lstat_of, "fifo", expect=ok(("prw-r-----", 1, 0, 0, 0, 0)))
    pair.check(opened, "fifo", os.O_RDONLY | os.O_NONBLOCK, expect=ok("opened"))
    pair.check(os.truncate, "fifo", 0, expect=err(errno.EINVAL))
    for name, kind, device in [
        ("chr", stat.S_IFCHR, os.makedev(1, 7)),
        ("blk", stat.S_IFBLK, os.makedev(8, 1)),
        ("big", stat.S_IFCHR, os.makedev(259, 70000)),
    ]:
        pair.check(os.mknod, name, kind | 0o620, device, expect=ok())
        pair.check(lambda p: os.lstat(p).st_rdev, name, expect=ok(device))
        pair.check(lstat_of, name)
    pair.check(lambda p: os.major(os.lstat(p).st_rdev), "big", expect=ok(259))
    pair.check(lambda p: os.minor(os.lstat(p).st_rdev), "big", expect=ok(70000))
    pair.check(os.mknod, "plain", stat.S_IFREG | 0o600, expect=ok())
    pair.check(lstat_of, "plain", expect=ok(("-rw-------", 1, 0, 0, 0, 0)))
    pair.check(os.mknod, "fifo", stat.S_IFIFO | 0o600, expect=err(errno.EEXIST))

    def unix_socket(root: Path) -> tuple[Any, ...]:
        # sun_path holds 108 bytes: reach the directory through its descriptor instead.
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            path = f"/proc/self/fd/{fd}/sock"
            server.bind(path)
            server.listen(1)
            client.connect(path)
            conn, _ = server.accept()
            with conn:
                client.sendall(b"ping")
                received = conn.recv(4)
            return received, lstat_of(str(root / "sock"))
        finally:
            client.close()
            server.close()
            os.close(fd)

    pair.same(unix_socket, expect=ok((b"ping", ("srwxr-xr-x", 1, 0, 0, 0, 0))))
    pair.check(listing, "", expect=ok(["big", "blk", "chr", "fifo", "plain", "sock"]))

    def kinds(root: Path) -> list[tuple[str, bool, bool, bool]]:  # from d_type, no stat
        with os.scandir(root) as entries:
            return sorted((e.name, e.is_dir(), e.is_file(), e.is_symlink()) for e in entries)

    pair.same(kinds)
    assert tree(pair.mount) == tree(pair.local)


# -- readdir ---------------------------------------------------------------------------------


def test_readdir_lists_a_thousand_entries_exactly_once(pair: Pair) -> None:
    names = [f"entry-{i:04d}-" + "x" * (i * 37 % 230) for i in range(1000)]
    subdirs = set(names[::100])

    def populate(root: Path) -> None:
        os.mkdir(root / "big")
        for name in names:
            if name in subdirs:
                os.mkdir(root / "big" / name)
            else:
                os.mknod(root / "big" / name)

    pair.same(populate, expect=ok())
    pair.check(listing, "big", expect=ok(sorted(names)))
    pair.same(lambda root: len(os.listdir(root / "big")), expect=ok(1000))  # none twice

    def scanned(root: Path) -> list[tuple[str, bool]]:
        with os.scandir(root / "big") as entries:
            return sorted((entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries)

    pair.same(scanned, expect=ok(sorted((name, name in subdirs) for name in names)))
    pair.check(lambda p: os.stat(p).st_nlink, "big", expect=ok(12))


def test_readdir_lists_dot_and_dotdot_as_ext4_does(pair: Pair) -> None:
    pair.run(os.makedirs, "top/sub")
    pair.run(os.mknod, "top/sub/f")

    def listed(root: Path) -> tuple[list[str], bool, bool]:
        """`ls -a1i`: the names, and whether `.` and `..` carry the right inode numbers."""
        sub = root / "top" / "sub"
        out = subprocess.run(
            ["ls", "-a1i", "--", str(sub)], check=True, capture_output=True, text=True
        ).stdout
        inodes = {
            name: int(ino) for ino, name in (line.split(maxsplit=1) for line in out.splitlines())
        }
        dot = inodes["."] == os.stat(sub).st_ino
        dotdot = inodes[".."] == os.stat(root / "top").st_ino
        return sorted(inodes), dot, dotdot

    pair.same(listed, expect=ok(([".", "..", "f"], True, True)))


def test_readdir_while_deleting(pair: Pair) -> None:
    names = [f"n{i:03d}" for i in range(300)]

    def iterate_and_delete(root: Path) -> bool:
        directory = root / "d"
        os.mkdir(directory)
        for name in names:
            os.mknod(directory / name)
        seen: list[str] = []
        deleted: set[str] = set()
        with os.scandir(directory) as entries:
            for entry in entries:
                seen.append(entry.name)
                if entry.name in deleted:
                    continue  # read ahead before we deleted it: allowed
                if len(seen) % 2:  # delete what we just read, as rm -r does
                    os.unlink(entry.path)
                    deleted.add(entry.name)
                if len(seen) == 20:  # and a batch not read yet
                    ahead = [n for n in names if n not in seen and n not in deleted][:60]
                    for name in ahead:
                        os.unlink(directory / name)
                    deleted.update(ahead)
        repeated = sorted({n for n in seen if seen.count(n) > 1})
        missed = sorted(set(names) - deleted - set(seen))
        assert (repeated, missed) == ([], []), f"{root}: repeated {repeated}, skipped {missed}"
        assert sorted(os.listdir(directory)) == sorted(set(names) - deleted)
        return len(deleted) > 0

    # The iteration order differs between the two filesystems, and so does what gets deleted:
    # each side checks the property itself.
    pair.same(iterate_and_delete, expect=ok(True))


# -- statfs ----------------------------------------------------------------------------------


def test_statfs(mounted: Path) -> None:
    st = os.statvfs(mounted)
    assert st.f_blocks > 0
    assert 0 <= st.f_bavail <= st.f_bfree <= st.f_blocks
    assert st.f_frsize > 0
    assert st.f_bsize > 0
    assert st.f_namemax == 255
    assert st.f_files >= st.f_ffree > 0
