"""Follow the meta group's change feed: keep the mount's cache current, and tell the kernel
what other mounts changed.

One task polls the leader (`meta.changes`) from the index the cache is current to; the leader
answers a few milliseconds after another client changed something, or after a quarter of a
second that nobody else did (the mount's own changes come along then), so every answer also
renews the cache's lease. While the leader cannot be reached, the lease runs out (at once when a
poll finds a node gone) and the mount asks the leader for everything again; if it missed too
much, the feed says so and the cache starts empty.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ringfs.fs.cluster import Cluster
from ringfs.fs.metacache import MetaCache, Name
from ringfs.node.errors import NodeError, ProtocolError, Unavailable

log = logging.getLogger(__name__)

#: Seconds between polls while the leader cannot be reached (the cache is not used meanwhile).
RETRY_DELAY = 0.2

Changed = Callable[[list[int], list[Name]], None]
Recalled = Callable[[tuple[int, ...]], None]


async def follow_changes(
    cluster: Cluster, cache: MetaCache, changed_elsewhere: Changed, recalled: Recalled
) -> None:
    """Poll the change feed until cancelled; `changed_elsewhere(inodes, names)` hears what
    other clients changed, `recalled(dirs)` which held directories the leader wants back."""
    failing = False
    while True:
        sent = trio.current_time()
        try:
            # A node gone (a leader down, a key revoked): stop answering from the cache at once.
            changes = await cluster.meta_changes(cache.index, failed=cache.lapse)
        except (Unavailable, NodeError, ProtocolError) as exc:
            cache.lapse()
            if not failing:
                log.warning("change feed: %s; names and attributes come from the leader", exc)
            failing = True
            await trio.sleep(RETRY_DELAY)
            continue
        if failing:
            log.info("change feed: following again from index %d", cache.index)
            failing = False
        if changes.reset and cache.index:
            log.info("change feed: changes after index %d are gone; cache emptied", cache.index)
        for inodes, names in cache.apply(changes, sent):
            changed_elsewhere(inodes, names)
        if changes.recalls:
            recalled(changes.recalls)
