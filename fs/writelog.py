"""Which bytes this mount wrote, and where they go when another mount changed the file first.

Pure logic, no I/O. A chunk's writes are remembered as ranges tagged with each write's sequence
number (`WriteLog`), so that once one generation of the chunk is committed, the ranges written
after it can be told apart from those it holds. When a commit finds that another client changed
the file since this one read it, `rebase` says which of this client's own bytes must be laid
over the file as it is now, and where: written ranges stay where they were written, and runs of
bytes appended with O_APPEND move to the file's new end, so that nothing another client
committed is overwritten by bytes this client did not write.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class _Range:
    seq: int
    start: int
    end: int


class WriteLog:
    """The byte ranges written to one chunk since the committed chunk they were built on."""

    __slots__ = ("_ranges",)

    def __init__(self) -> None:
        self._ranges: list[_Range] = []

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def add(self, seq: int, start: int, end: int, sealed: int) -> None:
        """Note a write; it joins the previous range when it continues it and no generation
        of the chunk was sealed (taken for upload) in between."""
        last = self._ranges[-1] if self._ranges else None
        if last is not None and last.end == start and last.seq > sealed:
            last.end, last.seq = end, seq
        else:
            self._ranges.append(_Range(seq, start, end))

    def drop_through(self, seq: int) -> None:
        """Forget the writes up to `seq`: they are committed."""
        self._ranges = [r for r in self._ranges if r.seq > seq]

    def spans(self, through: int | None = None) -> list[tuple[int, int]]:
        """The written bytes (of the writes up to `through`, or all) as sorted disjoint spans."""
        ranges = [r for r in self._ranges if through is None or r.seq <= through]
        return merge((r.start, r.end) for r in ranges)

    def last_seq(self, through: int) -> int:
        """The latest write up to `through` (0 if none)."""
        return max((r.seq for r in self._ranges if r.seq <= through), default=0)

    def end(self, through: int | None = None) -> int:
        """Where the written bytes end (0 if none)."""
        return max((r.end for r in self._ranges if through is None or r.seq <= through), default=0)


def merge(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted disjoint spans covering the same bytes; empty spans vanish."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(s for s in spans if s[0] < s[1]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


@dataclass(frozen=True, slots=True)
class Piece:
    """`length` bytes of this client's old view of the file, from `source`, go to `target`."""

    target: int
    source: int
    length: int


@dataclass(frozen=True, slots=True)
class Rebase:
    """Where this client's bytes go in the file as another client left it."""

    pieces: tuple[Piece, ...]
    #: Where each run of appended bytes is now, in the order they were written.
    appended: tuple[tuple[int, int], ...]
    #: The end of this client's bytes in the new layout.
    end: int


def rebase(
    written: Iterable[tuple[int, int]], appended: Sequence[tuple[int, int]], fresh_size: int
) -> Rebase:
    """Lay this client's bytes over a file of `fresh_size` bytes.

    `written`: the spans (absolute offsets) this client wrote; `appended`: the runs among them
    written with O_APPEND, in the order written. Other spans keep their place. Each run goes to
    the end of the file as it is now, after the runs before it, and after this client's own
    writes below where it was first placed (an append made after a write past the end follows
    that write). Runs come first in `pieces`, so where a later write of this client overlaps a
    moved run, the later write wins, as it did here.
    """
    runs = [(start, end) for start, end in appended if start < end]
    fixed = merge(written)
    for start, end in runs:
        fixed = merge(part for span in fixed for part in _outside(span, start, end))
    pieces: list[Piece] = []
    placed: list[tuple[int, int]] = []
    cursor = fresh_size
    for start, end in runs:
        below = max((e for s, e in fixed if s < start), default=0)
        at = max(cursor, below)
        pieces.append(Piece(at, start, end - start))
        placed.append((at, at + end - start))
        cursor = at + end - start
    pieces += [Piece(start, start, end - start) for start, end in fixed]
    ends = [end for _, end in fixed] + [end for _, end in placed]
    return Rebase(tuple(pieces), tuple(placed), max(ends, default=0))


def intersect(
    spans: Iterable[tuple[int, int]], within: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The parts of `spans` inside the sorted disjoint spans `within`, in the order given."""
    parts = []
    for start, end in spans:
        for low, high in within:
            if max(start, low) < min(end, high):
                parts.append((max(start, low), min(end, high)))
    return parts


def _outside(span: tuple[int, int], start: int, end: int) -> list[tuple[int, int]]:
    """The parts of `span` outside [start, end)."""
    a, b = span
    return [(a, min(b, start)), (max(a, end), b)]


def by_chunk(pieces: Iterable[Piece], chunk_size: int) -> dict[int, list[Piece]]:
    """The pieces cut at chunk boundaries of their targets, grouped by target chunk; each
    piece's target becomes its offset within that chunk."""
    chunks: dict[int, list[Piece]] = {}
    for piece in pieces:
        done = 0
        while done < piece.length:
            idx, within = divmod(piece.target + done, chunk_size)
            count = min(piece.length - done, chunk_size - within)
            chunks.setdefault(idx, []).append(Piece(within, piece.source + done, count))
            done += count
    return chunks
