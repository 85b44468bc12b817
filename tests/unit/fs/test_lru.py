"""`CostBoundedLRU`: values kept within a capacity of cost, least recently used out first."""

from __future__ import annotations

from ringfs.fs.lru import CostBoundedLRU


def test_putting_a_key_again_replaces_its_value_and_its_cost() -> None:
    lru: CostBoundedLRU[str, bytes] = CostBoundedLRU(100)
    lru.put("a", b"x", 40)
    lru.put("a", b"y", 30)
    assert (lru.get("a"), lru.held) == (b"y", 30)
    lru.forget("a")
    lru.forget("a")  # forgetting what is not kept is no error
    assert ("a" in lru, lru.held) == (False, 0)


def test_the_least_recently_used_go_first_and_a_look_is_no_use() -> None:
    lru: CostBoundedLRU[int, int] = CostBoundedLRU(30)
    for key in (1, 2, 3):
        lru.put(key, key, 10)
    assert lru.get(1) == 1  # 2 is now the oldest
    assert 2 in lru  # and looking does not change that
    lru.put(4, 4, 15)  # makes room for 15: 2 and 3 go
    assert [key for key in (1, 2, 3, 4) if key in lru] == [1, 4]
    assert lru.held == 25


def test_a_value_costing_more_than_the_capacity_is_not_kept_nor_is_the_one_it_replaces() -> None:
    lru: CostBoundedLRU[str, str] = CostBoundedLRU(10)
    lru.put("a", "small", 5)
    lru.put("b", "other", 5)
    lru.put("a", "huge", 11)
    assert (lru.get("a"), lru.get("b"), lru.held) == (None, "other", 5)
