"""Metadata commands and queries: the wire contract of the metadata state machine.

Every change to the namespace is a *command*, a frozen dataclass carrying everything that is not
a pure function of the state (timestamps, the caller's uid/gid), so applying it gives the same
database on every replica. *Queries* only read. Both travel as ``[op_name, field1, field2, ...]``
in dataclass field order. Decoding checks every type strictly, because the input comes off the
network: anything malformed raises ``NodeError("EINVAL")``. Names, link targets, xattr names and
values, block ids, checksums and client ids are ``bytes`` everywhere, never ``str``.

Results have a wire form too, made by `encode_result` and read back by `decode_result`; each
command or query class names the Python type of its result in ``RESULT``:

==============================  ==========================================
``RESULT``                      wire form
==============================  ==========================================
``None``                        nil
``Attr``                        ``Attr.to_wire()``: a list of 13 ints
``Attr | None``                 as ``Attr``, or nil
``bytes``                       bin
``list[bytes]``                 array of bin
``list[DirEntry]``              array of ``[offset, name, attr_wire]``
``tuple[Attr, list[Chunk]]``    ``[attr_wire, [chunk_wire, ...]]``
``FsStats``                     ``[chunk_size, inodes, stored, garbage_blocks, garbage_bytes]``
``list[BlockRef]``              array of ``[block_id, checksum]``
``int``                         int
``list[Outcome]``               array of ``[result, error]``, one per command of a batch
==============================  ==========================================
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, dataclass, fields, replace
from typing import Any, ClassVar, NamedTuple, Self, cast

from ringfs.node.checksum import is_checksum
from ringfs.node.errors import NodeError, ProtocolError

#: Linux NAME_MAX: the longest directory entry name, in bytes.
NAME_MAX = 255
#: Linux PATH_MAX (4096) less the terminating NUL: the longest symlink target.
SYMLINK_MAX = 4095
#: Linux XATTR_NAME_MAX and XATTR_SIZE_MAX.
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
#: Block ids are random 128-bit values, chosen by the writer.
BLOCK_ID_SIZE = 16
#: The root directory's inode number (FUSE_ROOT_ID).
ROOT_INO = 1
#: Most chunk map entries one ReadChunks returns or one CommitChunks carries (about 2 MiB):
#: a map of any size travels in pages, each far below the frame limit.
CHUNKS_PER_MESSAGE = 16384
#: The largest file whose data the metadata keeps itself (as Lustre's Data-on-MDT does): its
#: one chunk travels in the commit and comes back with the chunk map, and no storage node
#: stores or serves it. Bigger files' blocks go to the storage nodes.
INLINE_MAX = 64 * 1024
#: The most bytes at the end of a stored chunk the metadata keeps as its tail: an append
#: followed by fsync commits the new bytes alone instead of writing the chunk again.
TAIL_MAX = 64 * 1024
#: About the most tail bytes one ReadChunks answer carries; a page that reaches it may have
#: more after it, as a page of `CHUNKS_PER_MESSAGE` chunks may.
TAIL_PAGE_BYTES = 4 * 1024 * 1024
#: renameat2(2) flags, Linux values.
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
#: setxattr(2) flags, Linux values.
XATTR_CREATE = 1
XATTR_REPLACE = 2

# Integers are stored in SQLite INTEGER columns: signed 64 bits.
_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1


class _Record:
    """A frozen dataclass that travels as the list of its fields, in order."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    def to_wire(self) -> list[Any]:
        """The msgpack-ready list of this record's fields."""
        shape = _shape(type(self))
        values = shape.values(self)
        if shape.plain:
            return list(values)
        return [_encode(value) for value in values]

    @classmethod
    def from_wire(cls, obj: object) -> Self:
        """Decode and type-check a wire list; raises NodeError("EINVAL") when malformed."""
        items = _as_list(obj)
        shape = _shape(cls)
        if not shape.required <= len(items) <= len(shape.decoders):
            raise NodeError(
                "EINVAL", f"{cls.__name__} takes {len(shape.decoders)} fields, got {len(items)}"
            )
        if shape.all_int and _all_int(items):
            return cast("Callable[..., Self]", cls)(*items)
        values = [decode(item) for decode, item in zip(shape.decoders, items, strict=False)]
        return cast("Callable[..., Self]", cls)(*values)


class _Shape(NamedTuple):
    """What encoding and decoding a record class needs, worked out once: `dataclasses.fields`
    and the decoder lookups cost more than the work itself, and one readdir answer carries
    hundreds of records."""

    #: The field values in wire order, as a tuple.
    values: Callable[[Any], tuple[Any, ...]]
    decoders: tuple[Callable[[object], Any], ...]
    #: Fields without a default: the ones after them may be left off (a record written before
    #: they were added, such as a chunk in an older log entry).
    required: int
    #: No field holds a record or a sequence: the values go on the wire as they are.
    plain: bool
    #: Every field is an int (`Attr`): checked at once.
    all_int: bool


_SHAPES: dict[type, _Shape] = {}
_PLAIN_TYPES = frozenset({"int", "int | None", "bytes", "bytes | None", "str | None"})


def _shape(cls: type) -> _Shape:
    shape = _SHAPES.get(cls)
    if shape is None:
        types = [str(f.type) for f in fields(cls)]
        names = [f.name for f in fields(cls)]
        shape = _Shape(
            values=_values_getter(names),
            decoders=tuple(_DECODERS[t] for t in types),
            required=sum(f.default is MISSING for f in fields(cls)),
            plain=all(t in _PLAIN_TYPES for t in types),
            all_int=all(t == "int" for t in types),
        )
        _SHAPES[cls] = shape
    return shape


class _Message(_Record):
    """A command or query: a record whose wire list starts with its operation name."""

    __slots__ = ()
    OP: ClassVar[str]
    RESULT: ClassVar[str]

    def to_wire(self) -> list[Any]:
        """``[op_name, field1, field2, ...]``."""
        return [self.OP, *super().to_wire()]


# --- values -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attr(_Record):
    """An inode's attributes as stat(2) shows them, plus the data version for cache checks."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    #: st_blocks: 512-byte units of stored chunk data (8 for a directory).
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    #: Bumped on every data change (commit or size change): clients keep their page cache only
    #: while it is unchanged.
    version: int
    #: How many extended attributes it has: a client that knows it has none answers getxattr
    #: itself (`ls -l` asks for two on every file).
    xattrs: int


@dataclass(frozen=True, slots=True)
class Chunk(_Record):
    """One entry of a file's chunk map: chunk ``idx`` of the file lives in block ``block_id``.

    ``length`` is the number of valid bytes in the block; it can be less than the block holds
    after a truncation, and bytes beyond it read as zeros. ``checksum`` covers the whole block as
    stored, so a replica can be verified without knowing the file.

    ``data`` is the whole block when the metadata keeps it (a small file's only chunk, at most
    `INLINE_MAX` bytes: no storage node holds it); empty when storage nodes hold the block.

    ``tail`` is the chunk's last bytes when the metadata keeps them (at most `TAIL_MAX`): the
    block then holds only the first ``length - len(tail)`` (`stored_length`). An append
    followed by fsync commits the bytes it added as the tail of the chunk it extends.
    """

    idx: int
    block_id: bytes
    length: int
    checksum: bytes
    data: bytes = b""
    tail: bytes = b""

    def __post_init__(self) -> None:
        if self.idx < 0 or self.length < 0:
            raise NodeError("EINVAL", "negative chunk index or length")
        if len(self.block_id) != BLOCK_ID_SIZE or not is_checksum(self.checksum):
            raise NodeError("EINVAL", "bad block id or checksum size")
        if self.data and (self.idx != 0 or len(self.data) > INLINE_MAX):
            raise NodeError("EINVAL", f"only chunk 0 of up to {INLINE_MAX} bytes travels inline")
        if self.tail and (self.data or len(self.tail) > TAIL_MAX or len(self.tail) >= self.length):
            raise NodeError(
                "EINVAL", f"a tail is at most {TAIL_MAX} bytes, after stored bytes of a block"
            )

    @property
    def inline(self) -> bool:
        """Whether the metadata keeps this chunk's block."""
        return bool(self.data)

    @property
    def stored_length(self) -> int:
        """How many of the chunk's bytes its block holds (the rest is the tail)."""
        return self.length - len(self.tail)

    @property
    def identity(self) -> bytes:
        """What a writer names as the chunk it built on (`ChunkUpdate.base_block`): the block,
        or with a tail, a digest of the block and the tail, so a chunk whose tail changed is
        another chunk."""
        if not self.tail:
            return self.block_id
        return hashlib.sha256(b"ringfs tail\0" + self.block_id + self.tail).digest()[:BLOCK_ID_SIZE]

    def cut(self, length: int) -> Chunk:
        """This chunk holding at most its first `length` bytes (a truncation)."""
        if length >= self.length:
            return self
        tail = self.tail[: max(length - self.stored_length, 0)]
        return replace(self, length=length, tail=tail)


@dataclass(frozen=True, slots=True)
class DirEntry(_Record):
    """A directory entry with its inode's attributes (readdirplus)."""

    #: Position in the directory, > 0: 1 for ``.``, 2 for ``..``, then for each entry a value
    #: fixed when it was created, larger for later ones (a readdir resumes after it).
    offset: int
    name: bytes
    attr: Attr


@dataclass(frozen=True, slots=True)
class BlockRef(_Record):
    """A block some chunk map references, as repair needs it: where it is and what it holds."""

    block_id: bytes
    checksum: bytes


@dataclass(frozen=True, slots=True)
class FsStats(_Record):
    """Filesystem-wide numbers for statfs, and the garbage collector's backlog."""

    chunk_size: int
    inode_count: int
    stored_bytes: int
    garbage_blocks: int
    garbage_bytes: int


# --- commands -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Init(_Message):
    """Create the root directory and fix the chunk size; does nothing once initialised."""

    OP: ClassVar[str] = "init"
    RESULT: ClassVar[str] = "None"
    chunk_size: int
    uid: int
    gid: int
    now_ns: int


@dataclass(frozen=True, slots=True)
class Mknod(_Message):
    """Create a regular file, fifo, socket or device node; mode carries the type bits."""

    OP: ClassVar[str] = "mknod"
    RESULT: ClassVar[str] = "Attr"
    parent: int
    name: bytes
    mode: int
    rdev: int
    uid: int
    gid: int
    now_ns: int
    #: The new inode's number, from a range this client reserved (`Reserve`), or 0 for the
    #: next free one.
    ino: int = 0


@dataclass(frozen=True, slots=True)
class Mkdir(_Message):
    """Create a directory; mode is given without S_IFDIR."""

    OP: ClassVar[str] = "mkdir"
    RESULT: ClassVar[str] = "Attr"
    parent: int
    name: bytes
    mode: int
    uid: int
    gid: int
    now_ns: int
    #: The new inode's number, from a range this client reserved (`Reserve`), or 0 for the
    #: next free one.
    ino: int = 0


@dataclass(frozen=True, slots=True)
class Symlink(_Message):
    """Create a symbolic link to ``target``."""

    OP: ClassVar[str] = "symlink"
    RESULT: ClassVar[str] = "Attr"
    parent: int
    name: bytes
    target: bytes
    uid: int
    gid: int
    now_ns: int
    #: The new inode's number, from a range this client reserved (`Reserve`), or 0 for the
    #: next free one.
    ino: int = 0


@dataclass(frozen=True, slots=True)
class Link(_Message):
    """Add a hard link to a non-directory inode."""

    OP: ClassVar[str] = "link"
    RESULT: ClassVar[str] = "Attr"
    ino: int
    new_parent: int
    new_name: bytes
    now_ns: int


@dataclass(frozen=True, slots=True)
class Unlink(_Message):
    """Remove a non-directory entry; the result's nlink 0 means the inode is now an orphan."""

    OP: ClassVar[str] = "unlink"
    RESULT: ClassVar[str] = "Attr"
    parent: int
    name: bytes
    now_ns: int


@dataclass(frozen=True, slots=True)
class Rmdir(_Message):
    """Remove an empty directory."""

    OP: ClassVar[str] = "rmdir"
    RESULT: ClassVar[str] = "None"
    parent: int
    name: bytes
    now_ns: int


@dataclass(frozen=True, slots=True)
class Rename(_Message):
    """rename(2)/renameat2(2); the result is the inode formerly at the target, if any."""

    OP: ClassVar[str] = "rename"
    RESULT: ClassVar[str] = "Attr | None"
    parent: int
    name: bytes
    new_parent: int
    new_name: bytes
    flags: int
    now_ns: int


@dataclass(frozen=True, slots=True)
class Setattr(_Message):
    """Change attributes; None leaves a field unchanged. A size change truncates or extends."""

    OP: ClassVar[str] = "setattr"
    RESULT: ClassVar[str] = "Attr"
    ino: int
    mode: int | None
    uid: int | None
    gid: int | None
    size: int | None
    atime_ns: int | None
    mtime_ns: int | None
    now_ns: int


@dataclass(frozen=True, slots=True)
class ChunkUpdate(_Record):
    """A chunk a client wrote, and the committed chunk it built it on.

    ``base_block`` (empty: no chunk) and ``base_length`` are what the chunk map held for
    ``chunk.idx`` when the client read it: a commit applies only while they still hold, so it
    never overwrites a commit it did not see.
    """

    chunk: Chunk
    base_block: bytes
    base_length: int


@dataclass(frozen=True, slots=True)
class CommitChunks(_Message):
    """Point chunks of a file at newly written blocks and grow the size to at least ``size``.

    Compare-and-set: it fails with CHANGED, changing nothing, unless every chunk still has the
    base its update names and, when ``expect_size`` is set (appends), the size is that. Chunk
    bytes past the resulting size are cut off (a chunk wholly past it is dropped), so a later
    extension still reads zeros there.
    """

    OP: ClassVar[str] = "commit_chunks"
    RESULT: ClassVar[str] = "Attr"
    ino: int
    updates: tuple[ChunkUpdate, ...]
    size: int
    expect_size: int | None
    #: Times and permission bits to set as well (utimensat and chmod of a file with unflushed
    #: writes): one round for all. Without them, mtime becomes ``now_ns``, atime and mode stay.
    atime_ns: int | None
    mtime_ns: int | None
    mode: int | None
    now_ns: int


@dataclass(frozen=True, slots=True)
class SetXattr(_Message):
    """Set an extended attribute; flags are XATTR_CREATE / XATTR_REPLACE."""

    OP: ClassVar[str] = "setxattr"
    RESULT: ClassVar[str] = "None"
    ino: int
    name: bytes
    value: bytes
    flags: int
    now_ns: int


@dataclass(frozen=True, slots=True)
class RemoveXattr(_Message):
    """Remove an extended attribute."""

    OP: ClassVar[str] = "removexattr"
    RESULT: ClassVar[str] = "None"
    ino: int
    name: bytes
    now_ns: int


@dataclass(frozen=True, slots=True)
class Purge(_Message):
    """Delete orphans (nlink 0) no client holds open any more; their blocks become garbage."""

    OP: ClassVar[str] = "purge"
    RESULT: ClassVar[str] = "None"
    inos: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Reserve(_Message):
    """Set ``count`` inode numbers aside for the issuing client, replacing the range it held:
    it names the inodes it creates itself, before the leader hears of them. The result is
    the first of them."""

    OP: ClassVar[str] = "reserve"
    RESULT: ClassVar[str] = "int"
    count: int


@dataclass(frozen=True, slots=True)
class Delegate(_Message):
    """Let the issuing client alone change the names in directory ``ino`` until it releases
    it (see `ringfs.node.meta.delegations`)."""

    OP: ClassVar[str] = "delegate"
    RESULT: ClassVar[str] = "None"
    ino: int


@dataclass(frozen=True, slots=True)
class Release(_Message):
    """Give back the directories ``dirs`` that ``holder`` held (none listed: all of them); the
    issuer is the holder, or the leader when the holder stopped answering."""

    OP: ClassVar[str] = "release"
    RESULT: ClassVar[str] = "None"
    dirs: tuple[int, ...]
    holder: bytes


@dataclass(frozen=True, slots=True)
class Batch(_Message):
    """Commands of one client applied in order in one log entry, each with its own outcome.

    ``held`` are the directories the client acknowledged changes in before sending them: if
    it no longer holds every one of them, nothing is applied and the batch fails with ESTALE.
    """

    OP: ClassVar[str] = "batch"
    RESULT: ClassVar[str] = "list[Outcome]"
    held: tuple[int, ...]
    commands: tuple[Command, ...]


@dataclass(frozen=True, slots=True)
class Abandon(_Message):
    """Blocks a node holds that no chunk map references and that nobody committed for long:
    uploads a client never committed. Each id no chunk references is put on the garbage list
    (the collector deletes it from every node) and is refused by commits from then on, for
    good; the ids some chunk references are the result."""

    OP: ClassVar[str] = "abandon"
    RESULT: ClassVar[str] = "list[bytes]"
    block_ids: tuple[bytes, ...]
    lengths: tuple[int, ...]  # of each block's data, as its node holds it


@dataclass(frozen=True, slots=True)
class OpenSession(_Message):
    """Start the issuing client's session: from then on its commands with a sequence number
    are applied at most once. A session that `Expire` ended is never open again, so a late
    copy of a request from before cannot run twice."""

    OP: ClassVar[str] = "open_session"
    RESULT: ClassVar[str] = "None"


@dataclass(frozen=True, slots=True)
class Expire(_Message):
    """End what the clients ``client_ids`` keep in the metadata once they went away: their
    sessions, reserved inode numbers and held directories, and the files they unlinked while
    they had them open."""

    OP: ClassVar[str] = "expire"
    RESULT: ClassVar[str] = "None"
    client_ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ForgetGarbage(_Message):
    """Drop block ids from the garbage list once the collector deleted them."""

    OP: ClassVar[str] = "forget_garbage"
    RESULT: ClassVar[str] = "None"
    block_ids: tuple[bytes, ...]


# --- queries ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lookup(_Message):
    """The attributes of the inode named ``name`` in ``parent``."""

    OP: ClassVar[str] = "lookup"
    RESULT: ClassVar[str] = "Attr"
    parent: int
    name: bytes


@dataclass(frozen=True, slots=True)
class GetAttr(_Message):
    """An inode's attributes."""

    OP: ClassVar[str] = "getattr"
    RESULT: ClassVar[str] = "Attr"
    ino: int


@dataclass(frozen=True, slots=True)
class ReadDir(_Message):
    """Up to ``limit`` entries with offset > ``after``, ``.`` and ``..`` first, as ext4 lists
    them; an empty list marks the end."""

    OP: ClassVar[str] = "readdir"
    RESULT: ClassVar[str] = "list[DirEntry]"
    ino: int
    after: int
    limit: int


@dataclass(frozen=True, slots=True)
class ReadLink(_Message):
    """A symlink's target."""

    OP: ClassVar[str] = "readlink"
    RESULT: ClassVar[str] = "bytes"
    ino: int


@dataclass(frozen=True, slots=True)
class GetXattr(_Message):
    """One extended attribute's value."""

    OP: ClassVar[str] = "getxattr"
    RESULT: ClassVar[str] = "bytes"
    ino: int
    name: bytes


@dataclass(frozen=True, slots=True)
class ListXattr(_Message):
    """The names of an inode's extended attributes, sorted."""

    OP: ClassVar[str] = "listxattr"
    RESULT: ClassVar[str] = "list[bytes]"
    ino: int


@dataclass(frozen=True, slots=True)
class ReadChunks(_Message):
    """A file's attributes and up to ``limit`` entries of its chunk map from index ``first`` on,
    sorted by index; a large map is read in pages, checked against the attributes' version.

    ``unless_version``: a version of the file whose map the caller holds (0: none). While the
    file is at that version, the answer carries no chunks: the caller's map is the file's.
    """

    OP: ClassVar[str] = "read_chunks"
    RESULT: ClassVar[str] = "tuple[Attr, list[Chunk]]"
    ino: int
    first: int
    limit: int
    unless_version: int = 0


@dataclass(frozen=True, slots=True)
class FsInfo(_Message):
    """Chunk size, inode count, stored bytes, and the blocks listed as garbage."""

    OP: ClassVar[str] = "fsinfo"
    RESULT: ClassVar[str] = "FsStats"


@dataclass(frozen=True, slots=True)
class Garbage(_Message):
    """Up to ``limit`` block ids no file references any more, oldest first."""

    OP: ClassVar[str] = "garbage"
    RESULT: ClassVar[str] = "list[bytes]"
    limit: int


Command = (
    Init
    | Mknod
    | Mkdir
    | Symlink
    | Link
    | Unlink
    | Rmdir
    | Rename
    | Setattr
    | CommitChunks
    | SetXattr
    | RemoveXattr
    | Purge
    | OpenSession
    | Expire
    | ForgetGarbage
    | Abandon
    | Reserve
    | Delegate
    | Release
    | Batch
)


@dataclass(frozen=True, slots=True)
class Blocks(_Message):
    """Up to ``limit`` blocks of the storage nodes that some chunk map references, with ids
    from ``first`` to ``last``, in id order: the blocks of an arc of the ring (see
    `ringfs.node.cluster.ring.block_point`). Blocks the metadata keeps itself are not listed."""

    OP: ClassVar[str] = "blocks"
    RESULT: ClassVar[str] = "list[BlockRef]"
    first: bytes
    last: bytes
    limit: int


@dataclass(frozen=True, slots=True)
class Clients(_Message):
    """Up to ``limit`` ids above ``after``, in order, of the clients the metadata keeps
    something for: a session, reserved inode numbers, a held directory or an orphan."""

    OP: ClassVar[str] = "clients"
    RESULT: ClassVar[str] = "list[bytes]"
    after: bytes
    limit: int


Query = (
    Lookup
    | GetAttr
    | ReadDir
    | ReadLink
    | GetXattr
    | ListXattr
    | ReadChunks
    | FsInfo
    | Garbage
    | Blocks
    | Clients
)

COMMANDS: dict[str, type[_Message]] = {
    c.OP: c
    for c in (Init, Mknod, Mkdir, Symlink, Link, Unlink, Rmdir, Rename, Setattr, CommitChunks)
    + (SetXattr, RemoveXattr, Purge, OpenSession, Expire, ForgetGarbage, Abandon, Reserve)
    + (Delegate, Release, Batch)
}
QUERIES: dict[str, type[_Message]] = {
    c.OP: c
    for c in (Lookup, GetAttr, ReadDir, ReadLink, GetXattr, ListXattr, ReadChunks, FsInfo, Garbage)
    + (Blocks, Clients)
}


def command_from_wire(obj: object) -> Command:
    """Decode a command; raises NodeError("EINVAL") for unknown ops or malformed fields."""
    return cast(Command, _message_from_wire(obj, COMMANDS))


def query_from_wire(obj: object) -> Query:
    """Decode a query; raises NodeError("EINVAL") for unknown ops or malformed fields."""
    return cast(Query, _message_from_wire(obj, QUERIES))


def _message_from_wire(obj: object, registry: dict[str, type[_Message]]) -> _Message:
    items = _as_list(obj)
    if not items or not isinstance(items[0], str):
        raise NodeError("EINVAL", "a message starts with its op name")
    cls = registry.get(items[0])
    if cls is None:
        raise NodeError("EINVAL", f"unknown op {items[0]!r}")
    return cls.from_wire(items[1:])


# --- log entries and outcomes -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry(_Record):
    """A command as it enters the log, with the client session that makes retries idempotent.

    A command with both ``client_id`` and ``seq`` is applied at most once, in the session the
    client opened (`OpenSession`): a retry gets the first outcome back. ``acked_below`` tells
    the state machine the client has its answers for every seq below it, so those can be
    forgotten.
    """

    command: Command
    client_id: bytes | None = None
    seq: int | None = None
    acked_below: int | None = None


@dataclass(frozen=True, slots=True)
class Outcome(_Record):
    """What applying one command gave: a wire-form result, or an errno name.

    A late duplicate of a request the client already acknowledged gets "ESTALE" and is not run.
    """

    result: Any
    error: str | None

    def to_wire(self) -> list[Any]:
        # `result` is in wire form already (`encode_result`): walking it again would only
        # copy it, and a batch's answer holds one outcome per command.
        return [self.result, self.error]


# --- results ------------------------------------------------------------------------------


def encode_result(value: object) -> Any:
    """The wire form of a command or query result (see the module docstring)."""
    return _encode(value)


def decode_result(request: Command | Query, wire: object) -> Any:
    """Read back the result of ``request`` from its wire form.

    Raises ProtocolError when the node's answer does not have the shape ``request`` promises.
    """
    try:
        return _RESULT_DECODERS[request.RESULT](wire)
    except NodeError as exc:
        raise ProtocolError(f"malformed {request.OP} result: {exc}") from exc


def _encode(value: object) -> Any:
    if isinstance(value, _Record):
        return value.to_wire()
    if isinstance(value, list | tuple):
        return [_encode(item) for item in value]
    return value


# --- strict decoders ----------------------------------------------------------------------


def _as_list(obj: object) -> Sequence[object]:
    if not isinstance(obj, list | tuple):
        raise NodeError("EINVAL", f"expected an array, got {type(obj).__name__}")
    return obj


def _values_getter(names: Sequence[str]) -> Callable[[Any], tuple[Any, ...]]:
    """A function giving a record's values of `names` as a tuple (`attrgetter` gives a bare
    value for one name and wants at least one)."""
    if len(names) > 1:
        return operator.attrgetter(*names)
    return lambda record: tuple(getattr(record, name) for name in names)


def _all_int(items: Sequence[object]) -> bool:
    """Whether every item is a 64-bit integer (`_int`'s test, for a whole list at once)."""
    if set(map(type, items)) != {int}:
        return False
    ints = cast("Sequence[int]", items)
    return min(ints) >= _INT_MIN and max(ints) <= _INT_MAX


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not _INT_MIN <= value <= _INT_MAX:
        raise NodeError("EINVAL", f"expected a 64-bit integer, got {type(value).__name__}")
    return value


def _bytes(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise NodeError("EINVAL", f"expected bytes, got {type(value).__name__}")
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise NodeError("EINVAL", f"expected str, got {type(value).__name__}")
    return value


def _none(value: object) -> None:
    if value is not None:
        raise NodeError("EINVAL", f"expected nil, got {type(value).__name__}")


def _optional(decode: Callable[[object], Any]) -> Callable[[object], Any]:
    return lambda value: None if value is None else decode(value)


def _list_of(decode: Callable[[object], Any]) -> Callable[[object], list[Any]]:
    return lambda value: [decode(item) for item in _as_list(value)]


def _tuple_of(decode: Callable[[object], Any]) -> Callable[[object], tuple[Any, ...]]:
    return lambda value: tuple(decode(item) for item in _as_list(value))


def _attr_and_chunks(value: object) -> tuple[Attr, list[Chunk]]:
    items = _as_list(value)
    if len(items) != 2:
        raise NodeError("EINVAL", "expected [attr, chunks]")
    return Attr.from_wire(items[0]), _list_of(Chunk.from_wire)(items[1])


# Keyed by the annotation text of a field (this module uses postponed annotations).
_DECODERS: dict[str, Callable[[object], Any]] = {
    "int": _int,
    "int | None": _optional(_int),
    "bytes": _bytes,
    "bytes | None": _optional(_bytes),
    "str | None": _optional(_str),
    "Any": lambda value: value,
    "Attr": Attr.from_wire,
    "Command": command_from_wire,
    "Chunk": Chunk.from_wire,
    "tuple[ChunkUpdate, ...]": _tuple_of(ChunkUpdate.from_wire),
    "tuple[bytes, ...]": _tuple_of(_bytes),
    "tuple[int, ...]": _tuple_of(_int),
    "tuple[Command, ...]": _tuple_of(command_from_wire),
}

# Keyed by the RESULT of each command and query class.
_RESULT_DECODERS: dict[str, Callable[[object], Any]] = {
    "None": _none,
    "int": _int,
    "list[Outcome]": _list_of(Outcome.from_wire),
    "Attr": Attr.from_wire,
    "Attr | None": _optional(Attr.from_wire),
    "bytes": _bytes,
    "list[bytes]": _list_of(_bytes),
    "list[DirEntry]": _list_of(DirEntry.from_wire),
    "list[BlockRef]": _list_of(BlockRef.from_wire),
    "tuple[Attr, list[Chunk]]": _attr_and_chunks,
    "FsStats": FsStats.from_wire,
}
