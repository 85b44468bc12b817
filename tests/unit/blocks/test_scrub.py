"""Scrub's bookkeeping: when a pass is due, the position it resumes from, its file."""

from __future__ import annotations

from pathlib import Path

from ringfs.node.blocks.scrub import ScrubState, load, save

WEEK = 7 * 24 * 3600.0


def test_a_pass_is_due_a_period_after_the_last_one_started() -> None:
    state = ScrubState()
    assert state.due(now=100.0, period=WEEK) == 0.0  # never scrubbed: now
    state.begin(100.0)
    assert state.progress() == 0.0
    state.checked(b"\x40" + bytes(15), 10, corrupt=False)
    state.checked(b"\x80" + bytes(15), 0, corrupt=True)
    assert state.progress() == 0.5
    assert state.due(now=200.0, period=WEEK) == 0.0  # one is under way
    state.end(300.0)
    assert (state.last_verified, state.last_corrupt, state.last_finished) == (1, 1, 300.0)
    assert state.progress() is None
    assert state.due(now=300.0, period=WEEK) == WEEK - 200.0
    assert state.due(now=100.0 + 2 * WEEK, period=WEEK) == 0.0


def test_a_pass_under_way_goes_on_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "scrub.json"
    state = ScrubState()
    state.begin(50.0)
    state.checked(b"\x11" * 16, 4096, corrupt=False)
    save(path, state)
    again = load(path)
    assert again == state
    again.begin(999.0)  # resumes: the pass keeps its start and its position
    assert again.started == 50.0
    assert again.after() == b"\x11" * 16
    assert again.verified_bytes == 4096


def test_an_unreadable_file_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "scrub.json"
    assert load(path) == ScrubState()
    for text in ("{", '{"cursor": "zz"}', '{"nonsense": 1}', "[]", '{"started": "x"}'):
        path.write_text(text)
        assert load(path) == ScrubState()
