"""Lines of `ringfs status`: what is left to move and when it will be done, and a node's state
when it does not answer."""

from __future__ import annotations

from typing import Any

from ringfs.tools.ctl import _moving_line, _node_line

MiB = 2**20


def node(blocks: int, missing: int, repaired: int, running_since: float | None) -> dict[str, Any]:
    record = {"missing": missing, "repaired": repaired, "repaired_bytes": repaired * 4 * MiB}
    if running_since is not None:
        record["started"] = running_since
    return {
        "blocks": blocks,
        "bytes": blocks * 4 * MiB,
        "repair": {
            "current": record if running_since is not None else None,
            "last": None if running_since is not None else record,
        },
    }


def test_nothing_missing_says_nothing() -> None:
    assert _moving_line([node(10, 0, 0, None), node(10, 3, 3, None)], now=100.0) is None


def test_what_is_left_and_when_it_will_be_done_at_the_rate_it_goes() -> None:
    # 40 copies left at 4 MiB; 20 copies (80 MiB) stored in the last 10 s: 8 MiB/s.
    stats = [node(100, 60, 20, running_since=90.0), node(100, 0, 0, None)]
    assert _moving_line(stats, now=100.0) == (
        "moving: 40 copies (about 160.0MiB) to the nodes the map places them on, "
        "at 8.0MiB/s: about 20s left"
    )


def test_missing_copies_no_pass_is_moving_yet() -> None:
    line = _moving_line([node(100, 5, 0, None)], now=100.0)
    assert line == (
        "moving: 5 copies (about 20.0MiB) to the nodes the map places them on, "
        "at the nodes' next repair passes"
    )


def test_a_node_that_does_not_answer_shows_as_marked_out_or_unreachable() -> None:
    assert _node_line("n4", "h:4", "down-out", None, "").split() == ["n4", "h:4", "down-out"]
    assert _node_line("n3", "h:3", "active", None, "").split() == ["n3", "h:3", "unreachable"]
