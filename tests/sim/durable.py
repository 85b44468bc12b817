"""What a simulated node keeps across crashes, and the state machine it replicates.

`MemoryStorage` is a `RaftStorage` with `RaftLog`'s semantics: it holds exactly what `save`
and `compact` got, and while `failing` it raises `StorageFailure` as a full disk would.
`KVMachine` is the register/counter `StateMachine` of the workload; it is durable only through
its `Disk` image, written when a snapshot is taken or installed (and, in runs where applying
is durable, after every apply). Its snapshot images travel as files, like `MetaMachine`'s.
Both report to the invariant `Monitor`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ringfs.node.errors import StorageFailure
from ringfs.node.raft.core import NEW_MEMBER, Entry, EntryKind, HardState, SnapshotMeta
from tests.sim.invariants import Monitor

__all__ = ["Disk", "KVMachine", "MemoryStorage"]


class MemoryStorage:
    """`RaftStorage` in memory with `RaftLog`'s semantics; it survives the node's crashes."""

    def __init__(self) -> None:
        self.hard_state: HardState = NEW_MEMBER
        self.snapshot: SnapshotMeta | None = None
        self.log: dict[int, Entry] = {}
        self.on_save: Callable[[tuple[Entry, ...]], None] | None = None
        self.failing = False

    def load(self) -> tuple[HardState, SnapshotMeta | None, list[Entry]]:
        return self.hard_state, self.snapshot, [self.log[i] for i in sorted(self.log)]

    def _check(self) -> None:
        if self.failing:
            raise StorageFailure("raft log: database or disk is full")

    def save(
        self, hard_state: HardState | None, truncate_from: int | None, append: Sequence[Entry]
    ) -> None:
        self._check()
        if hard_state is not None:
            self.hard_state = hard_state
        if truncate_from is not None:
            for index in [i for i in self.log if i >= truncate_from]:
                del self.log[index]
        for entry in append:
            self.log[entry.index] = entry
        if self.on_save is not None:
            self.on_save(tuple(append))

    def compact(self, meta: SnapshotMeta) -> None:
        self._check()
        for index in [i for i in self.log if i <= meta.last_index]:
            del self.log[index]
        self.snapshot = meta

    def copy(self) -> MemoryStorage:
        """What it holds now, apart: a backup to restore later."""
        copy = MemoryStorage()
        copy.hard_state, copy.snapshot, copy.log = self.hard_state, self.snapshot, dict(self.log)
        return copy


@dataclasses.dataclass
class Disk:
    """All of a node that outlives a crash."""

    storage: MemoryStorage
    image: tuple[int, bytes] | None = None

    def copy(self) -> Disk:
        return Disk(self.storage.copy(), self.image)

    @property
    def empty(self) -> bool:
        """Nothing in the log, no snapshot: a new member, or one whose storage was lost."""
        return not self.storage.log and self.storage.snapshot is None


class KVMachine:
    """The register/counter state machine; commands are JSON ``{"id", "op", "key", "args"}``."""

    def __init__(
        self,
        node_id: str,
        disk: Disk,
        monitor: Monitor,
        durable_apply: bool,
        new_file: Callable[[], Path],
    ) -> None:
        """`new_file` names a file for each snapshot image."""
        self.node_id = node_id
        self.disk = disk
        self.monitor = monitor
        self.durable_apply = durable_apply
        self._new_file = new_file
        self.data: dict[str, Any] = {}
        self.index = 0
        if disk.image is not None:
            self._load(disk.image[1])

    def _load(self, image: bytes) -> None:
        state = json.loads(image)
        self.index, self.data = state["index"], state["data"]

    def _image(self) -> bytes:
        return json.dumps({"index": self.index, "data": self.data}, sort_keys=True).encode()

    def apply(self, entries: Sequence[Entry]) -> list[Any]:
        results = []
        for entry in entries:
            self.monitor.applied(self.node_id, entry)
            result = None
            if entry.kind is EntryKind.COMMAND:
                result = self._execute(json.loads(entry.data))
            self.index = entry.index
            results.append(result)
        if self.durable_apply:
            self.disk.image = (self.index, self._image())
        return results

    def _execute(self, command: dict[str, Any]) -> Any:
        key, args, value = command["key"], command["args"], self.data.get(command["key"])
        match command["op"]:
            case "read":
                return value
            case "write":
                self.data[key] = args[0]
                return "ok"
            case "cas":
                if value != args[0]:
                    return False
                self.data[key] = args[1]
                return True
            case "incr":
                self.data[key] = (value or 0) + 1
                return self.data[key]
        raise ValueError(f"unknown command {command!r}")

    def applied_index(self) -> int:
        return self.index

    def snapshot(self) -> tuple[int, Path]:
        image = self._image()
        self.disk.image = (self.index, image)
        self.monitor.snapshot_taken(self.node_id, self.index, image)
        path = self._new_file()
        path.write_bytes(image)
        return self.index, path

    def restore(self, meta: SnapshotMeta, image: Path) -> None:
        data = image.read_bytes()
        image.unlink()
        self._load(data)
        self.disk.image = (self.index, data)
        self.monitor.installed(self.node_id, meta, self.index, data)

    def reopen(self) -> None:
        """Back to what the disk holds, as after a restart."""
        self.data, self.index = {}, 0
        if self.disk.image is not None:
            self._load(self.disk.image[1])
        self.monitor.restarted(self.node_id, self.index)

    def get(self, key: str) -> Any:
        return self.data.get(key)
