"""Scrub on every node: every stored block is read and verified once per period.

A copy that fails its checksum is quarantined by the read (`BlockStore.get`), and the repairer
is asked for a pass at once, which stores a good copy again from another node. Reads go
through a token bucket of `rate` bytes per second, one block at a time, so the disk stays the
mounts'. The position is saved every few seconds (`node/blocks/scrub.py`): a restarted node
goes on with the pass it was in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

from ringfs.node.blocks.repair import TokenBucket
from ringfs.node.blocks.scrub import ScrubConfig, load, save
from ringfs.node.blocks.store import BlockStore
from ringfs.node.errors import CORRUPT, NodeError
from ringfs.node.repairer import Repairer

log = logging.getLogger(__name__)

#: Seconds between saves of the position.
SAVE_EVERY = 5.0
#: Ids taken from the store's listing at a time.
LISTING_BATCH = 256


class Scrubber:
    """The scrub loop of one node."""

    def __init__(
        self, store: BlockStore, repairer: Repairer, state_path: Path, config: ScrubConfig
    ) -> None:
        self.store = store
        self.repairer = repairer
        self.path = state_path
        self.config = config
        self.state = load(state_path)
        self._bucket = TokenBucket(config.rate, burst=config.rate)

    async def run(self) -> None:
        """Scrub until cancelled."""
        while True:
            await trio.sleep(self.state.due(time.time(), self.config.period))
            resumed = self.state.started is not None
            self.state.begin(time.time())
            if resumed:
                log.info("scrub: going on with the pass started at %s", self.state.started)
            await self._pass()
            self.state.end(time.time())
            await trio.to_thread.run_sync(save, self.path, self.state)
            log.info(
                "scrub pass done: %d blocks verified, %d corrupt",
                self.state.last_verified,
                self.state.last_corrupt,
            )

    async def _pass(self) -> None:
        saved = trio.current_time()
        listing = self.store.ids_after(self.state.after())
        while batch := await trio.to_thread.run_sync(_take, listing, LISTING_BATCH):
            for block_id in batch:
                await self._check(block_id)
                if trio.current_time() - saved >= SAVE_EVERY:
                    await trio.to_thread.run_sync(save, self.path, self.state)
                    saved = trio.current_time()

    async def _check(self, block_id: bytes) -> None:
        try:
            data, _ = await trio.to_thread.run_sync(self.store.get, block_id)
        except NodeError as exc:
            if exc.name != CORRUPT:
                return  # deleted meanwhile, or unreadable: the next pass tries again
            log.warning("scrub: block %s is corrupt: repairing", block_id.hex())
            self.state.checked(block_id, 0, corrupt=True)
            self.repairer.ask()
            return
        self.state.checked(block_id, len(data), corrupt=False)
        await trio.sleep(self._bucket.take(len(data), trio.current_time()))

    def stats(self) -> dict[str, Any]:
        """Cheap counters for `node.stats`."""
        return {**self.state.to_wire(), "rate": self.config.rate, "period": self.config.period}


def _take(ids: Iterator[bytes], count: int) -> list[bytes]:
    """The next `count` ids of a listing (fewer at its end)."""
    return [block_id for _, block_id in zip(range(count), ids, strict=False)]
