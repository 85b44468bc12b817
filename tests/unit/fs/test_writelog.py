"""Which bytes a mount wrote, and where they go when it rebases (pure: no I/O)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ringfs.fs.writelog import Piece, WriteLog, by_chunk, intersect, merge, rebase


def test_a_write_log_joins_continuing_writes_within_one_generation() -> None:
    log = WriteLog()
    log.add(1, 0, 10, sealed=0)
    log.add(2, 10, 20, sealed=0)  # continues it: one range
    log.add(3, 20, 30, sealed=2)  # continues it, but the chunk was taken for upload at 2
    log.add(4, 5, 7, sealed=2)
    assert log.spans() == [(0, 30)]
    assert log.spans(through=2) == [(0, 20)]
    assert log.end(through=2) == 20
    log.drop_through(2)  # the generation holding writes 1 and 2 is committed
    assert log.spans() == [(5, 7), (20, 30)]
    assert log.end() == 30
    log.drop_through(4)
    assert not log
    assert log.end() == 0


def test_merge() -> None:
    assert merge([(5, 9), (0, 2), (2, 3), (8, 12), (20, 20)]) == [(0, 3), (5, 12)]


def test_fixed_writes_stay_and_appends_move_to_the_new_end() -> None:
    plan = rebase([(0, 10), (100, 150)], [(100, 150)], fresh_size=180)
    assert plan.pieces == (Piece(180, 100, 50), Piece(0, 0, 10))
    assert (plan.appended, plan.end) == (((180, 230),), 230)
    # Our own fixed writes beyond the new end keep the appends after them.
    plan = rebase([(300, 310), (310, 320)], [(310, 320)], fresh_size=200)
    assert plan.pieces == (Piece(310, 310, 10), Piece(300, 300, 10))
    # Without appends, nothing moves, whatever the file's size now.
    plan = rebase([(40, 60)], [], fresh_size=10)
    assert (plan.pieces, plan.appended, plan.end) == ((Piece(40, 40, 20),), (), 60)


def test_each_run_of_appends_goes_after_what_came_before_it() -> None:
    # An append at 1000, a pwrite at 5000, an append at 5010; another client appended 50.
    plan = rebase([(1000, 1100), (5000, 5010), (5010, 5110)], [(1000, 1100), (5010, 5110)], 1050)
    assert plan.appended == ((1050, 1150), (5010, 5110))
    assert Piece(5000, 5000, 10) in plan.pieces
    assert plan.end == 5110


def test_intersect() -> None:
    assert intersect([(0, 10), (20, 30)], [(5, 25)]) == [(5, 10), (20, 25)]
    assert intersect([(0, 10)], []) == []


def test_pieces_are_cut_at_chunk_boundaries() -> None:
    chunks = by_chunk([Piece(90, 1000, 30), Piece(250, 5, 10)], chunk_size=100)
    assert chunks == {
        0: [Piece(90, 1000, 10)],
        1: [Piece(0, 1010, 20)],
        2: [Piece(50, 5, 10)],
    }


spans = st.lists(st.tuples(st.integers(0, 300), st.integers(1, 60)), max_size=6).map(
    lambda items: [(start, start + length) for start, length in items]
)


@given(spans, st.lists(st.integers(1, 40), max_size=3), st.integers(0, 400), st.integers(1, 50))
def test_rebase_keeps_every_byte_of_ours_and_only_ours(
    written: list[tuple[int, int]], run_lengths: list[int], fresh_size: int, chunk_size: int
) -> None:
    """Laid over any file, our fixed bytes land where we wrote them and our appended runs, in
    order, at the end of the file; all else stays the file's."""
    runs, end = [], max((e for _, e in written), default=0)
    for length in run_lengths:  # appends made after the fixed writes, at our end each time
        runs.append((end, end + length))
        end += length
    old = bytes(range(256)) * 4  # our view: byte i is i % 256
    plan = rebase(written + runs, runs, fresh_size)
    new = bytearray(b"\xff" * 1200)  # the other client's file, marked
    for idx, pieces in by_chunk(plan.pieces, chunk_size).items():
        for piece in pieces:
            assert piece.target >= 0
            assert piece.target + piece.length <= chunk_size
            at = idx * chunk_size + piece.target
            new[at : at + piece.length] = old[piece.source : piece.source + piece.length]
    fixed = {i for start, stop in merge(written) for i in range(start, stop)}
    for i in fixed:
        assert new[i] == old[i]
    cursor = max(fresh_size, *(e for _, e in written)) if written else fresh_size
    assert plan.appended == tuple(
        (cursor + start - runs[0][0], cursor + stop - runs[0][0]) for start, stop in runs
    )
    moved = set()
    for (start, stop), (at, _) in zip(runs, plan.appended, strict=True):
        assert new[at : at + stop - start] == old[start:stop]
        moved |= set(range(at, at + stop - start))
    touched = {i for i in range(1200) if new[i] != 0xFF or i in fixed or i in moved}
    assert touched <= fixed | moved
    placed = fixed | moved
    assert plan.end == (max(placed) + 1 if placed else 0)
