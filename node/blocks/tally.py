"""How many blocks and data bytes a store holds, without walking the store for each question.

The store is walked once, in id order, beside the node's work (`BlockStore.count`); after that
every change keeps the tally. While the walk runs, a change to an id it has already passed is
counted here, and a change to an id ahead of it is left to the walk, which will see the file as
it is then. The store makes each change to a block file and tells the tally under `lock`, and
the walk lists and counts under the same lock, so a change is never counted twice or missed.
A block file whose size something outside ringfs changed is counted at its size when it goes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Tally:
    blocks: int = 0
    #: Data bytes (headers not counted).
    data_bytes: int = 0
    #: Whether the walk has counted every block.
    complete: bool = False
    #: The largest id the walk has counted everything up to.
    walked: bytes | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def changed(self, block_id: bytes, blocks: int, size: int) -> None:
        """A block file appeared (+1), disappeared (-1) or changed size; call under `lock`."""
        if self.complete or (self.walked is not None and block_id <= self.walked):
            self.blocks += blocks
            self.data_bytes += size

    def counted(self, upto: bytes, blocks: int, size: int) -> None:
        """The walk counted every block up to the id `upto`; call under `lock`."""
        self.blocks += blocks
        self.data_bytes += size
        self.walked = upto
