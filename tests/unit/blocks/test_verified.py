"""The store's memory of blocks it verified whole a moment ago."""

from __future__ import annotations

from ringfs.node.blocks.verified import RecentlyVerified


def test_a_verification_stands_for_its_age_only() -> None:
    memory = RecentlyVerified(max_age=60.0)
    assert not memory.holds(b"a", 0.0)
    memory.verified(b"a", 100.0)
    assert memory.holds(b"a", 100.0)
    assert memory.holds(b"a", 159.9)
    assert not memory.holds(b"a", 160.0)
    memory.verified(b"a", 160.0)  # verified again: it stands again
    assert memory.holds(b"a", 200.0)


def test_the_least_recently_verified_are_forgotten_first() -> None:
    memory = RecentlyVerified(max_blocks=2)
    memory.verified(b"a", 1.0)
    memory.verified(b"b", 2.0)
    memory.verified(b"a", 3.0)
    memory.verified(b"c", 4.0)
    assert [memory.holds(block, 5.0) for block in (b"a", b"b", b"c")] == [True, False, True]


def test_a_forgotten_block_is_not_held() -> None:
    memory = RecentlyVerified()
    memory.verified(b"a", 1.0)
    memory.forget(b"a")
    memory.forget(b"never seen")
    assert not memory.holds(b"a", 1.0)
