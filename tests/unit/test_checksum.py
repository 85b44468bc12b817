"""Block checksums: XXH3-128 for new blocks, sha256 still understood for older ones."""

from __future__ import annotations

import hashlib

import pytest

from ringfs.node.checksum import CHECKSUM_SIZE, SHA256_SIZE, checksum, is_checksum, matches

DATA = bytes(range(256)) * 100


def test_a_new_checksum_is_xxh3_128_of_the_bytes() -> None:
    # The known answer of XXH3-128 for the empty input, from the reference implementation.
    assert checksum(b"").hex() == "99aa06d3014798d86001c324468d497f"
    assert len(checksum(DATA)) == CHECKSUM_SIZE
    assert checksum(memoryview(DATA)[10:]) == checksum(DATA[10:])
    assert checksum(DATA) != checksum(DATA[:-1] + b"\x00")


@pytest.mark.parametrize("kind", [checksum, lambda data: hashlib.sha256(data).digest()])
def test_both_kinds_match_their_bytes_and_nothing_else(kind: object) -> None:
    assert callable(kind)
    expected = kind(DATA)
    assert is_checksum(expected)
    assert matches(DATA, expected)
    assert matches(memoryview(DATA), expected)
    assert not matches(DATA + b"x", expected)
    assert not matches(DATA, bytes(len(expected)))


@pytest.mark.parametrize(
    "obj", [b"", bytes(CHECKSUM_SIZE - 1), bytes(SHA256_SIZE + 1), "0" * 32, None, 16]
)
def test_anything_else_is_no_checksum(obj: object) -> None:
    assert not is_checksum(obj)
