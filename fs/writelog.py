"""Which bytes this mount wrote, and where they go when another mount changed the file first.

Pure logic, no I/O. A chunk's writes are remembered as ranges tagged with each write's sequence
number (`WriteLog`), so that once one generation of the chunk is committed, the ranges written
after it can be told apart from those it holds. When a commit finds that another client changed
the file since this one read it, `rebase` says which of this client's own bytes must be laid
over the file as it is now, and where: written ranges stay where they were written, and bytes
appended with O_APPEND move to the file's new end, so that nothing another client committed is
overwritten by bytes this client did not write.
"""

from __future__ import annotations

from collections.abc import Iterable
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
    #: Where the appended bytes start now (None: there were none).
    appended_at: int | None
    #: The end of this client's bytes in the new layout.
    end: int


def rebase(
    written: Iterable[tuple[int, int]], appended: tuple[int, int] | None, fresh_size: int
) -> Rebase:
    """Lay this client's bytes over a file of `fresh_size` bytes.

    `written`: spans (absolute offsets) written at fixed positions; `appended`: the span of
    bytes written with O_APPEND since the last commit (they follow everything else this client
    wrote). Fixed spans keep their place. Appended bytes go to the end of the file as it is
    now, or right after this client's own fixed writes if those reach further.
    """
    fixed = merge(written)
    if appended is not None:
        start, end = appended
        fixed = merge(clip for s in fixed for clip in _outside(s, start, end))
    pieces = [Piece(start, start, end - start) for start, end in fixed]
    fixed_end = max((end for _, end in fixed), default=0)
    if appended is None:
        return Rebase(tuple(pieces), None, fixed_end)
    start, end = appended
    at = max(fresh_size, fixed_end)
    if end > start:
        pieces.append(Piece(at, start, end - start))
    return Rebase(tuple(pieces), at, max(fixed_end, at + end - start))


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
