"""`ringfs bench --random` on local directories: it reads what it wrote, prints a column per
directory, and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from ringfs.tools import randombench


def test_every_directory_gets_a_column_and_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(randombench, "FILE_BYTES", 4 * randombench.MiB)
    monkeypatch.setattr(randombench, "READS", 50)
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    randombench.run([("one", first), ("two", second)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "50 cold reads of 4096 bytes at random in a 4 MiB file:"
    assert lines[1].split() == ["one", "two"]
    rows = {line[:20].strip(): line[20:].split() for line in lines[2:]}
    assert list(rows) == ["reads/s", "median ms", "p90 ms", "then seq. MB/s"]
    assert all(len(values) == 2 and float(values[0]) > 0 for values in rows.values())
    assert list(first.iterdir()) == list(second.iterdir()) == []
