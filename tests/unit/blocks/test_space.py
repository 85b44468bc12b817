"""The reserve kept for the metadata and the room test for a block: plain arithmetic."""

from __future__ import annotations

import pytest

from ringfs.node.blocks.space import (
    INODE_RESERVE,
    RESERVE_CAP,
    RESERVE_FLOOR,
    Capacity,
    MiB,
    Reserve,
    Space,
    footprint,
    refusal,
)

GiB = 1 << 30


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        pytest.param(100 * MiB, 50 * MiB, id="tiny disk: half of it"),
        pytest.param(320 * MiB, RESERVE_FLOOR, id="small disk: the floor"),
        pytest.param(100 * GiB, 2 * GiB, id="2 percent"),
        pytest.param(10_000 * GiB, RESERVE_CAP, id="huge disk: the cap"),
    ],
)
def test_default_reserve(total: int, expected: int) -> None:
    assert Reserve().bytes_for(total) == expected


def test_explicit_reserve() -> None:
    assert Reserve(size=123).bytes_for(100 * GiB) == 123
    assert Reserve(size=10 * GiB).bytes_for(GiB) == 10 * GiB  # refuses every block: as asked
    assert Reserve(percent=10).bytes_for(100 * GiB) == 10 * GiB
    assert Reserve(percent=0).bytes_for(100 * GiB) == 0


@pytest.mark.parametrize(
    "kwargs", [{"size": 1, "percent": 1.0}, {"size": -1}, {"percent": 100.0}, {"percent": -1.0}]
)
def test_bad_reserve(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="reserve"):
        Reserve(**kwargs)  # type: ignore[arg-type]


def space(free: int, inodes: int | None = 10_000) -> Space:
    return Space(total=GiB, free=free, unit=4096, inodes_free=inodes)


def test_footprint_counts_whole_units_and_directories() -> None:
    assert footprint(space(GiB), 0) == 2 * 4096
    assert footprint(space(GiB), 1) == 3 * 4096
    assert footprint(space(GiB), 4096) == 3 * 4096
    assert footprint(space(GiB), 4097) == 4 * 4096


def test_refusal() -> None:
    assert refusal(space(100 * MiB), 90 * MiB, pending=0, need=10 * MiB) is None
    assert refusal(space(100 * MiB), 90 * MiB, pending=0, need=10 * MiB + 1) is not None
    # What writes under way will take counts as gone.
    assert refusal(space(100 * MiB), 90 * MiB, pending=1, need=10 * MiB) is not None
    reason = refusal(space(100 * MiB, inodes=INODE_RESERVE), 0, pending=0, need=4096)
    assert reason is not None
    assert "inodes" in reason
    # A filesystem that does not count inodes is judged by bytes alone.
    assert refusal(space(100 * MiB, inodes=None), 0, pending=0, need=4096) is None


def test_capacity_leaves_the_reserve_out() -> None:
    assert Capacity.of(space(100 * MiB), 90 * MiB) == Capacity(GiB - 90 * MiB, 10 * MiB, 90 * MiB)
    assert Capacity.of(space(10 * MiB), 90 * MiB).free == 0
