"""Opening a file again: the mount asks with the version of the chunk map it kept from the last
open, and the leader sends no chunks while the file is at that version. Close-to-open holds:
once another client changed the file, the open reads the new map and the new bytes.

Driven through the mount's handlers (no kernel); tests/e2e/test_coherent_cache.py checks the
same with two real mounts.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio

from ringfs.fs.operations import Operations
from ringfs.node.meta.commands import Attr, Chunk, ReadChunks
from tests.cluster.conftest import LocalNodes
from tests.cluster.test_files import CHUNK, flushed, mount_ops
from tests.cluster.test_shared_files import content, reopen, two_clients

Answers = list[tuple[ReadChunks, tuple[Attr, list[Chunk]]]]


def record_map_reads(ops: Operations, monkeypatch: pytest.MonkeyPatch) -> Answers:
    """Every `read_chunks` query `ops` sends from now on, with its answer."""
    answers: Answers = []
    real = ops.cluster.meta_query

    async def recording(query: Any) -> Any:
        answer = await real(query)
        if isinstance(query, ReadChunks):
            answers.append((query, answer))
        return answer

    monkeypatch.setattr(ops.cluster, "meta_query", recording)
    return answers


async def rewrite(ops: Operations, ino: int, data: bytes) -> None:
    fh = await reopen(ops, ino)
    await ops.write(fh, 0, data)
    await ops.release(fh)


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "blocks"])
async def test_a_file_opened_again_is_read_with_the_map_kept(
    small_chunks: LocalNodes, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, inline: bool
) -> None:
    ops = await mount_ops(small_chunks, nursery, **({} if inline else {"inline_max": 0}))
    data = os.urandom(3 * CHUNK + 100 if not inline else 1000)
    fh, ino = await flushed(ops, b"f", data)
    await ops.release(fh)
    answers = record_map_reads(ops, monkeypatch)
    assert await content(ops, ino) == data
    ((query, (attr, chunks)),) = answers
    assert query.unless_version == attr.version
    assert chunks == []  # the leader sent none: the mount read with the map it kept
    new = os.urandom(len(data))
    await rewrite(ops, ino, new)  # this mount's own change: its kept map is the new one
    answers.clear()
    assert await content(ops, ino) == new
    assert [chunks for _, (_, chunks) in answers] == [[]]


async def test_an_open_after_another_clients_change_reads_the_new_map(
    small_chunks: LocalNodes, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await two_clients(small_chunks, nursery)
    data = os.urandom(1000)
    fh, ino = await flushed(a, b"f", data)
    await a.release(fh)
    assert await content(a, ino) == data  # a keeps the map
    new = data[:10] + os.urandom(990)  # the same size, and the same first bytes
    await rewrite(b, ino, new)
    answers = record_map_reads(a, monkeypatch)
    assert await content(a, ino) == new  # at once: close-to-open
    (query, (attr, chunks)), *_ = answers
    assert query.unless_version
    assert query.unless_version != attr.version
    assert chunks[0].data == new
