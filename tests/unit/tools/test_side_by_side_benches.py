"""The benches that run in several directories side by side (`ringfs bench --random`,
`--beside-copies`), on local directories: each prints a column per directory and leaves
nothing behind."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ringfs.tools import besidebench, randombench

BENCHES = [
    pytest.param(
        randombench,
        {"FILE_BYTES": 4 * randombench.MiB, "READS": 50},
        "50 cold reads of 4096 bytes at random in a 4 MiB file:",
        20,
        ["reads/s", "median ms", "p90 ms", "then seq. MB/s"],
        id="random",
    ),
    pytest.param(
        besidebench,
        {"COPY_BYTES": 8 * besidebench.MiB, "IDLE_CREATES": 10},
        "create + close of an empty file, idle and beside 2 copies of 8 MiB files into the "
        "same directory (ms):",
        22,
        ["idle median", "beside: median", "beside: p90", "beside: max", "beside: creates"],
        id="beside-copies",
    ),
]


@pytest.mark.parametrize(("bench", "small", "title", "label_width", "row_names"), BENCHES)
def test_every_directory_gets_a_column_and_keeps_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    bench: ModuleType,
    small: dict[str, Any],
    title: str,
    label_width: int,
    row_names: list[str],
) -> None:
    for name, value in small.items():
        monkeypatch.setattr(bench, name, value)
    targets = [("one", tmp_path / "a"), ("two", tmp_path / "b")]
    for _, directory in targets:
        directory.mkdir()
    bench.run(targets)
    first, labels, *lines = capsys.readouterr().out.splitlines()
    rows = {line[:label_width].strip(): line[label_width:].split() for line in lines}
    assert first == title
    assert labels.split() == ["one", "two"]
    assert list(rows) == row_names
    assert all(len(values) == 2 and float(values[0]) > 0 for values in rows.values())
    assert all(list(directory.iterdir()) == [] for _, directory in targets)


def test_a_copy_beside_that_fails_is_reported_and_what_was_made_removed(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="cp into"):
        besidebench.beside_copies(tmp_path, tmp_path.parent / "no such source")
    assert list(tmp_path.iterdir()) == []
