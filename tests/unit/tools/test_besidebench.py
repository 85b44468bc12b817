"""`ringfs bench --beside-copies` on local directories: the copies arrive whole, every
directory gets a column, and nothing is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from ringfs.tools import besidebench


def test_every_directory_gets_a_column_and_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(besidebench, "COPY_BYTES", 8 * besidebench.MiB)
    monkeypatch.setattr(besidebench, "IDLE_CREATES", 10)
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    besidebench.run([("one", first), ("two", second)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("create + close of an empty file, idle and beside 2 copies")
    assert lines[1].split() == ["one", "two"]
    rows = {line[:22].strip(): line[22:].split() for line in lines[2:]}
    assert list(rows) == [
        "idle median",
        "beside: median",
        "beside: p90",
        "beside: max",
        "beside: creates",
    ]
    assert all(len(values) == 2 and float(values[0]) > 0 for values in rows.values())
    assert list(first.iterdir()) == list(second.iterdir()) == []


def test_a_copy_that_fails_is_reported_and_what_was_made_removed(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="cp into"):
        besidebench.beside_copies(tmp_path, tmp_path.parent / "no such source")
    assert list(tmp_path.iterdir()) == []
