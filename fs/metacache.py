"""What the mount knows of names and attributes, kept coherent by the meta group's change feed.

The mount answers lookups, stats and xattr probes from here instead of asking the leader, for as
long as its view of the change feed (`ringfs.node.meta.feed`) is fresh: each answer of the feed
says what changed up to an index, and keeps the cache usable until `lease` seconds after that
poll was sent. A change in another mount therefore reaches this cache as soon as the feed
delivers it (milliseconds), and never later than the lease if the feed stops.

The cache also knows which files this mount *watches* (`ringfs.node.meta.watches`): the leader
holds back every other client's change of them until this mount's feed has heard of it, so the
chunk map this mount kept of one is current while the watch holds (`watching`): while the
cache's lease does, the feed answers from the leader (the term) that registered it, and for
`WATCH_TIME` at most from the request that registered it. A lease that ran out ends them all:
the leader stopped waiting for this mount meanwhile.

No I/O here: `ringfs.fs.watcher` polls the feed and feeds the answers in; the FUSE handlers ask
and keep. A reply fetched from the leader is kept only if nothing it covers was invalidated
while it was on the way (see `stamp`): a late reply must not bring back what a change removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ringfs.node.meta import commands as cmd
from ringfs.node.meta.commands import Attr, Command
from ringfs.node.meta.feed import Changes
from ringfs.node.meta.watches import LEASE, WATCH_TIME

#: Most attributes and names kept; the oldest go first.
CACHE_ENTRIES = 200_000
#: Keys remembered as invalidated while replies may be on the way; more, and every reply
#: older than now is refused (rare: only a flood of changes fills it).
DIRTIED_LIMIT = 10_000
#: Own commands whose feed record has not come yet; beyond this many the oldest are forgotten
#: (their records then drop what they touched, which costs a lookup, nothing more).
AWAITED_LIMIT = 4096

Name = tuple[int, bytes]
#: readdir's `.` and `..`: readdirplus links no inode for them (fuse_direntplus_link skips
#: them), and they are not names to cache.
DOTS = (b".", b"..")


class MetaCache:
    """Attributes by inode and inodes by name, valid while the feed is fresh."""

    def __init__(
        self,
        client_id: bytes,
        clock: Callable[[], float],
        limit: int = CACHE_ENTRIES,
    ) -> None:
        self.client_id = client_id
        self._clock = clock
        self._limit = limit
        self._attrs: dict[int, Attr] = {}
        self._names: dict[Name, int] = {}
        # The names of each directory `_names` holds, in the order they were kept.
        self._children: dict[int, dict[bytes, None]] = {}
        # The name each inode was last kept under: a directory's one name, so its parent.
        self._up: dict[int, Name] = {}
        # Directories whose every name is in `_names`: a name not there does not exist.
        self._complete: set[int] = set()
        self._fresh_until = float("-inf")
        # Files this mount watches: the term of the leader that registered each watch, and
        # until when it lasts; the term of the leader that answers the feed.
        self._watched: dict[int, tuple[int, float]] = {}
        self._term = 0
        #: The feed index everything here is current to.
        self.index = 0
        # Bumped after each batch of invalidations; a key invalidated at tick t refuses replies
        # stamped at t or before.
        self._tick = 0
        self._dirtied: dict[int | Name, int] = {}
        self._floor = 0
        # Own commands on their way, by session seq: the inodes their answer kept (None
        # until it came), and the inodes named by their feed record if it came first.
        self._awaited: dict[int, frozenset[int] | None] = {}
        self._early: dict[int, tuple[int, ...]] = {}

    # -- asking ------------------------------------------------------------------------------

    def fresh(self) -> bool:
        return self._clock() < self._fresh_until

    def attr(self, ino: int) -> Attr | None:
        return self._attrs.get(ino) if self.fresh() else None

    def now(self) -> float:
        return self._clock()

    def watching(self, ino: int) -> bool:
        """Whether no other client's change of `ino` can have been answered that this cache
        has not heard of: the leader that answers the feed registered the watch, and it holds."""
        term, until = self._watched.get(ino, (0, 0.0))
        now = self._clock()
        return term == self._term != 0 and now < min(until, self._fresh_until)

    def lookup(self, parent: int, name: bytes) -> Attr | None:
        if not self.fresh():
            return None
        ino = self._names.get((parent, name))
        return None if ino is None else self._attrs.get(ino)

    def known_missing(self, parent: int, name: bytes) -> bool:
        """Whether `name` is known not to exist in `parent` (this mount knows all its names)."""
        return self.fresh() and parent in self._complete and (parent, name) not in self._names

    def known_empty(self, directory: int) -> bool:
        """Whether `directory` is known to have no names (this mount knows all its names)."""
        return self.fresh() and directory in self._complete and directory not in self._children

    def listing(self, directory: int) -> list[tuple[bytes, Attr]] | None:
        """Every name of `directory` with its attributes, `.` and `..` first, or None unless
        this mount knows all of them (`mark_complete`) while the feed is fresh."""
        if not self.fresh() or directory not in self._complete:
            return None
        parent = self.parent(directory)
        here = self._attrs.get(directory)
        above = None if parent is None else self._attrs.get(parent)
        if here is None or above is None:
            return None
        entries = list(zip(DOTS, (here, above), strict=True))
        for name in self._children.get(directory, ()):
            attr = self._attrs.get(self._names[directory, name])
            if attr is None:
                return None
            entries.append((name, attr))
        return entries

    def parent(self, directory: int) -> int | None:
        """The directory holding `directory`'s name, if that name is known (a directory has
        one name; the root is its own parent)."""
        if directory == cmd.ROOT_INO:
            return directory
        name = self._up.get(directory)
        return name[0] if name is not None and self._names.get(name) == directory else None

    def inode_of(self, name: Name) -> int | None:
        return self._names.get(name)

    def complete_among(self, dirs: Iterable[int]) -> set[int]:
        return {ino for ino in dirs if ino in self._complete}

    # -- keeping -----------------------------------------------------------------------------

    def keep_name(self, parent: int, name: bytes, ino: int, stamp: int) -> None:
        """A name known to lead to `ino`, its attributes unknown."""
        if self.may_keep((parent, name), stamp):
            self._put(self._names, (parent, name), ino)

    def mark_complete(self, dirs: Iterable[int]) -> None:
        """These directories' names are all known: those this mount made, or kept up to date
        through its own change of them."""
        self._complete.update(dirs)

    def stamp(self) -> int:
        """Taken before asking the leader, and given back with what it answered."""
        return self._tick

    def watch(self, ino: int, term: int, stamp: int, asked_at: float) -> None:
        """The leader of `term` registered this mount as watching `ino` when it answered a
        request sent at `stamp` and time `asked_at` (term 0: it did not), unless a change of
        `ino` came since."""
        if term and self.may_keep(ino, stamp):
            self._watched.pop(ino, None)  # to the young end
            self._watched[ino] = (term, asked_at + WATCH_TIME)
            if len(self._watched) > self._limit:
                del self._watched[next(iter(self._watched))]

    def keep_attr(self, attr: Attr, stamp: int) -> None:
        if self.may_keep(attr.ino, stamp):
            self._put(self._attrs, attr.ino, attr)

    def keep_entry(self, parent: int, name: bytes, attr: Attr, stamp: int) -> bool:
        """Keep a name and its inode's attributes; whether they were kept."""
        if self.may_keep((parent, name), stamp) and self.may_keep(attr.ino, stamp):
            self._put(self._names, (parent, name), attr.ino)
            self._put(self._attrs, attr.ino, attr)
            return True
        return False

    def keep_listing(
        self, directory: int, entries: Iterable[tuple[bytes, Attr]], stamp: int, whole: bool
    ) -> None:
        """Keep what the leader listed of `directory` (`.` and `..` give attributes only).
        A `whole` listing makes the directory complete, unless a name in it changed since
        `stamp` (`_drop` marks the directory too) or a name was not kept."""
        kept = True
        for name, attr in entries:
            if name in DOTS:
                self.keep_attr(attr, stamp)
            else:
                kept = self.keep_entry(directory, name, attr, stamp) and kept
        if whole and kept and self.may_keep(directory, stamp):
            self._complete.add(directory)

    def may_keep(self, key: int | Name, stamp: int) -> bool:
        """Whether nothing dropped `key` since `stamp` was taken."""
        return stamp >= self._floor and self._dirtied.get(key, -1) < stamp

    def expect(self, seq: int) -> None:
        """Own command `seq` is on its way. Its answer carries the attributes of the inodes
        it changed, which are those its feed record names: a record that comes first waits
        for the answer (`answered`) instead of dropping them."""
        self._awaited[seq] = None
        if len(self._awaited) > AWAITED_LIMIT:
            oldest = next(iter(self._awaited))
            del self._awaited[oldest]  # its record, if still to come, drops all it names
            for ino in self._early.pop(oldest, ()):
                self._drop(ino)
            self._tick += 1

    def answered(self, seq: int, kept: Iterable[int]) -> None:
        """Own command `seq` answered, and its answer is kept for `kept` (nothing, if it
        failed): every other inode its feed record names is dropped, now if the record came
        first, else when it comes."""
        kept = frozenset(kept)
        early = self._early.pop(seq, None)
        if early is None:
            if seq in self._awaited:
                self._awaited[seq] = kept
            return
        del self._awaited[seq]
        for ino in early:
            if ino not in kept:
                self._drop(ino)
        self._tick += 1

    def _put(self, table: dict[Any, Any], key: Any, value: Any) -> None:
        previous = table.pop(key, None)  # to the young end
        if isinstance(key, tuple):
            if previous is None:
                self._children.setdefault(key[0], {})[key[1]] = None
            elif self._up.get(previous) == key:
                del self._up[previous]
            self._up[value] = key
        table[key] = value
        if len(table) > self._limit:
            oldest = next(iter(table))
            if isinstance(oldest, tuple):
                self._complete.discard(oldest[0])
                self._unname(oldest)
            else:
                del table[oldest]

    def _unname(self, name: Name) -> None:
        """Forget a name held in `_names`, and what points to it."""
        ino = self._names.pop(name)
        if self._up.get(ino) == name:
            del self._up[ino]
        names = self._children[name[0]]
        del names[name[1]]
        if not names:
            del self._children[name[0]]

    # -- forgetting --------------------------------------------------------------------------

    def forget(self, inodes: Iterable[int] = (), names: Iterable[Name] = ()) -> None:
        """What a change of this mount's own touched, with the inodes those names led to:
        gone before its caller is answered (`Metadata.apply` then keeps what it knows)."""
        for name in names:
            ino = self._names.get(name)
            if ino is not None:
                self._drop(ino)
            self._drop(name)
        for ino in inodes:
            self._drop(ino)
        self._tick += 1

    def apply(self, changes: Changes, sent_at: float) -> list[tuple[list[int], list[Name]]]:
        """Take an answer of the feed to a poll sent at `sent_at`; return what other clients
        changed (inodes, names), which the kernel must forget too."""
        foreign = []
        if changes.reset:
            self.clear()
        elif changes.term != self._term or not self.fresh():
            # Another leader, which knows none of them, or a gap: the leader stopped waiting.
            self._watched.clear()
        for record in changes.records:
            own = record.client_id == self.client_id
            spared = frozenset[int]()
            if own and record.seq is not None and record.seq in self._awaited:
                kept = self._awaited[record.seq]
                if kept is None:  # before the answer: it decides
                    self._early[record.seq] = record.inodes
                    continue
                spared = kept
                del self._awaited[record.seq]
            for ino in record.inodes:
                if ino not in spared:
                    self._drop(ino)
            if own:
                continue  # its names were updated when the command answered (`Metadata.apply`)
            for name in record.entries:
                self._drop(name)
            foreign.append((list(record.inodes), list(record.entries)))
        self._tick += 1
        self.index = changes.upto
        self._fresh_until = sent_at + LEASE
        self._term = changes.term
        return foreign

    def lapse(self) -> None:
        """The feed failed: answer nothing from here until it answers again, and trust no
        watch from before (the leader may stop waiting for this mount meanwhile)."""
        self._fresh_until = float("-inf")

    def clear(self) -> None:
        """Forget everything (the feed lost track: some changes will never be told)."""
        self._attrs.clear()
        self._names.clear()
        self._children.clear()
        self._up.clear()
        self._complete.clear()
        self._watched.clear()
        self._dirtied.clear()
        self._awaited.clear()
        self._early.clear()
        self._floor = self._tick = self._tick + 1

    def new_session(self, client_id: bytes) -> None:
        """The metadata ended this mount's session, and with it what the mount held: start
        over as `client_id` (the feed names this mount's own changes by it)."""
        self.client_id = client_id
        self.clear()

    def _drop(self, key: int | Name) -> None:
        if isinstance(key, int):
            self._attrs.pop(key, None)
            self._watched.pop(key, None)
        else:
            if key in self._names:
                self._unname(key)
            self._complete.discard(key[0])
            self._dirtied[key[0]] = self._tick  # a listing on its way may lack this change
        self._dirtied[key] = self._tick
        if len(self._dirtied) > DIRTIED_LIMIT:
            self._dirtied.clear()
            self._floor = self._tick + 1


def touched(command: Command) -> tuple[list[int], list[Name]]:
    """The inodes and names a command of this mount may change, as far as its fields tell
    (`MetaCache.forget` adds the inodes the names lead to)."""
    match command:
        case cmd.Mknod() | cmd.Mkdir() | cmd.Symlink() | cmd.Unlink() | cmd.Rmdir():
            return [command.parent], [(command.parent, command.name)]
        case cmd.Link():
            return [command.ino, command.new_parent], [(command.new_parent, command.new_name)]
        case cmd.Rename():
            names = [(command.parent, command.name), (command.new_parent, command.new_name)]
            return [command.parent, command.new_parent], names
        case cmd.Purge():
            return list(command.inos), []
        case cmd.Setattr() | cmd.SetXattr() | cmd.RemoveXattr() | cmd.CommitChunks():
            return [command.ino], []
    return [], []
