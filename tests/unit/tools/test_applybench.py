"""`ringfs bench --apply`: the entries it applies make the files a mount would have made,
and it prints its figures and keeps nothing."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ringfs.node.meta.commands import ROOT_INO, Lookup, ReadChunks
from ringfs.node.meta.replica import MetaMachine
from ringfs.tools import applybench


def test_the_entries_make_small_files_with_their_bytes_inline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(applybench, "WARMUP", 5)
    machine = MetaMachine(tmp_path / "meta.db")
    try:
        seconds = applybench.small_files(applybench._Log(machine), 45)
        state = machine.state
        assert len(seconds) == 40
        assert all(s > 0 for s in seconds)
        directory = state.query(Lookup(ROOT_INO, b"d00"))
        found = state.query(Lookup(directory.ino, b"f20"))
        assert stat.S_ISREG(found.mode)
        assert found.size == applybench.FILE_BYTES
        attr, chunks = state.query(ReadChunks(found.ino, 0, 1))
        assert attr.version == 1
        assert len(chunks[0].data) == applybench.FILE_BYTES
    finally:
        machine.state.close()


def test_it_prints_its_figures_and_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(applybench, "WARMUP", 5)
    applybench.run(tmp_path, 25)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "20 entries after the first 5, one at a time:"
    figures = {line.split()[0]: float(line.split()[1]) for line in lines[2:]}
    assert list(figures) == ["median", "p90", "mean"]
    assert all(v > 0 for v in figures.values())
    assert list(tmp_path.iterdir()) == []
