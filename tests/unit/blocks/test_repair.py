"""Repair's decisions: walking a node's arcs page by page, progress, the copy rate, the ledger."""

from __future__ import annotations

import random

import pytest

from ringfs.node.blocks.repair import (
    PassCursor,
    PassRecord,
    RepairLedger,
    TokenBucket,
    ring_share,
    successor,
    unreferenced,
    within,
)
from ringfs.node.cluster.ring import RING_SIZE, block_point


def test_successor_counts_up_and_stops_at_the_end() -> None:
    assert successor(bytes(15) + b"\x01") == bytes(15) + b"\x02"
    assert successor(b"\x00" + b"\xff" * 15) == b"\x01" + bytes(15)
    assert successor(b"\xff" * 16) is None


def _walk(arcs: list[tuple[int, int]], ids: list[bytes], limit: int) -> tuple[list[bytes], int]:
    """Every id a cursor is given by a metadata that holds `ids`, and the pages it took."""
    cursor = PassCursor(arcs)
    seen: list[bytes] = []
    pages = 0
    progress = 0.0
    while not cursor.done:
        first, last = cursor.page()
        page = sorted(i for i in ids if first <= i <= last)[:limit]
        seen += page
        pages += 1
        cursor.advance(page, limit)
        assert cursor.progress() >= progress
        progress = cursor.progress()
    assert progress == 1.0
    return seen, pages


@pytest.mark.parametrize("limit", [1, 3, 50])
def test_a_pass_sees_every_id_of_its_arcs_once_in_order(limit: int) -> None:
    rng = random.Random(limit)
    ids = [rng.randbytes(16) for _ in range(300)]
    ids += [b"\x00" * 16, b"\xff" * 16, (2**63).to_bytes(8, "big") + bytes(8)]
    arcs = [(0, 2**62), (2**63, 2**63 + 2**60), (RING_SIZE - 2**58, RING_SIZE - 1)]
    seen, pages = _walk(arcs, ids, limit)
    wanted = sorted(i for i in ids if any(a <= block_point(i) <= b for a, b in arcs))
    assert seen == wanted
    assert pages <= len(wanted) // limit + len(arcs)


def test_progress_follows_the_ring_positions_walked() -> None:
    cursor = PassCursor([(0, 99), (200, 299)])
    assert cursor.progress() == 0.0
    cursor.next_id = (50).to_bytes(8, "big") + bytes(8)
    assert cursor.progress() == 0.25
    cursor.advance([], 10)  # the rest of the first arc held nothing
    assert cursor.progress() == 0.5
    cursor.advance([], 10)
    assert cursor.done
    assert cursor.progress() == 1.0
    assert PassCursor([]).done
    assert ring_share([(0, RING_SIZE // 4 - 1)]) == 0.25


def test_the_bucket_lets_the_rate_through_on_average() -> None:
    bucket = TokenBucket(rate=100.0, burst=100.0)
    assert bucket.take(60, now=0.0) == 0.0  # a full bucket to start with
    assert bucket.take(60, now=0.0) == pytest.approx(0.2)  # 20 bytes of debt
    assert bucket.take(10, now=0.3) == 0.0  # the debt is paid, 0 left after these 10
    assert bucket.take(500, now=0.3) == pytest.approx(5.0)  # any size gets through
    sent, now = 0, 0.0
    bucket = TokenBucket(rate=1000.0, burst=100.0)
    while now < 10.0:
        now += bucket.take(37, now)
        sent += 37
    assert 10_000 <= sent <= 10_000 + 100 + 37


def test_the_ledger_counts_passes_and_knows_the_last_clean_one() -> None:
    ledger = RepairLedger()
    assert ledger.ask() == 1
    record = ledger.begin(10.0)
    record.checked, record.missing = 5, 2
    ledger.note_repaired(100)
    ledger.end(11.0, complete=True)
    assert ledger.clean == 0
    assert ledger.last is record
    assert record.left == 1
    assert ledger.ask() == 2
    ledger.begin(12.0)
    ledger.end(12.5, complete=False)  # cut short: nothing missing, but not all seen
    assert ledger.clean == 0
    assert ledger.ask() == 3
    ledger.begin(13.0).checked = 5
    ledger.end(13.0, complete=True)
    assert ledger.clean == 3
    assert (ledger.repaired, ledger.repaired_bytes) == (1, 100)
    assert PassRecord(3, 1.0, missing=2, repaired=2).left == 0


def test_within_finds_a_position_in_sorted_arcs() -> None:
    arcs = [(0, 9), (20, 29), (RING_SIZE - 5, RING_SIZE - 1)]
    inside = {0, 9, 20, 25, 29, RING_SIZE - 5, RING_SIZE - 1}
    for point in [*inside, 10, 19, 30, RING_SIZE - 6]:
        assert within(arcs, point) == (point in inside)
    assert not within([], 5)


def test_unreferenced_are_the_held_ids_a_page_did_not_list() -> None:
    held = [bytes([n]) * 16 for n in (1, 3, 5, 7, 9)]
    listed = [bytes([3]) * 16, bytes([4]) * 16]  # 4 is referenced but not held here
    first, last = bytes([2]) * 16, bytes([7]) * 16
    assert unreferenced(held, first, last, listed) == [bytes([5]) * 16, bytes([7]) * 16]
    assert unreferenced(held, first, first, listed) == []
    assert unreferenced([], first, last, listed) == []
