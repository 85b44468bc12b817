"""Small files live in the metadata: no storage node holds their bytes, every mount reads them
byte for byte, and one that grows past `INLINE_MAX` moves to the storage nodes whole."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from ringfs.node.meta.commands import INLINE_MAX
from tests.e2e.conftest import Cluster, Mount

pytestmark = pytest.mark.fuse


def blocks_on_nodes(cluster: Cluster) -> int:
    """The blocks all storage nodes hold, as `ringfs status` counts them."""
    lines = cluster.status().splitlines()
    rows = [line.split() for line in lines if line.startswith("n") and " active " in line]
    assert len(rows) == 3, lines
    return sum(int(row[3]) for row in rows)


def test_small_files_are_kept_by_the_metadata(
    mount_factory: Callable[..., Mount], cluster: Cluster
) -> None:
    a, b = mount_factory("a").path, mount_factory("b").path
    contents = {f"f{i}": os.urandom(i * 997 % INLINE_MAX + 1) for i in range(40)}
    contents["edge"] = os.urandom(INLINE_MAX)
    for name, data in contents.items():
        (a / name).write_bytes(data)
    assert blocks_on_nodes(cluster) == 0
    for name, data in contents.items():
        assert (b / name).read_bytes() == data, name
    # Grown past the limit by the other mount: the whole file moves to the storage nodes.
    with open(b / "edge", "ab") as more:
        more.write(b"!" * 10)
    assert (a / "edge").read_bytes() == contents["edge"] + b"!" * 10
    assert blocks_on_nodes(cluster) == 3  # one block, three copies
    # Rewritten small again by the first mount: back in the metadata, the block is garbage.
    (a / "edge").write_bytes(b"small again")
    assert (b / "edge").read_bytes() == b"small again"


def test_a_small_file_written_in_pieces_and_truncated(mounted: Path) -> None:
    path = mounted / "pieces"
    with open(path, "wb") as out:
        for i in range(10):
            out.write(bytes([i]) * 1000)
            out.flush()
            os.fsync(out.fileno())
    expected = b"".join(bytes([i]) * 1000 for i in range(10))
    assert path.read_bytes() == expected
    os.truncate(path, 2500)
    with open(path, "r+b") as out:
        out.seek(5000)
        out.write(b"end")
    assert path.read_bytes() == expected[:2500] + bytes(2500) + b"end"
