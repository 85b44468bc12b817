"""`ringfs bench --parts`: each part does the work it times (the entries make the files a
mount would make, the rounds commit, the calls are answered), prints its figures, and keeps
nothing."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ringfs.node.meta.commands import ROOT_INO, Lookup, ReadChunks
from ringfs.node.meta.replica import MetaMachine
from ringfs.tools import applybench, raftbench, rpcbench


def test_the_apply_entries_make_small_files_with_their_bytes_inline(
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


def test_the_apply_bench_prints_its_figures_and_keeps_nothing(
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


def test_the_raft_rounds_time_each_call_of_every_round() -> None:
    times = raftbench.rounds(50)
    assert [len(samples) for samples in times.values()] == [50, 50, 50, 50]
    assert all(s > 0 for samples in times.values() for s in samples)


async def test_the_calls_are_answered_by_a_node_of_their_own(tmp_path: Path) -> None:
    times = await rpcbench.calls(tmp_path, 20)
    assert list(times) == ["query (GetAttr)", "command (Setattr of a time)"]
    assert all(len(samples) == 20 for samples in times.values())


def test_the_rpc_bench_prints_its_figures_and_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(rpcbench, "CALLS", 10)
    monkeypatch.setattr(rpcbench, "WARMUP", 2)
    rpcbench.run(tmp_path)
    first, *lines = capsys.readouterr().out.splitlines()
    assert first == "a metadata call to a one-node group in this process, 10 each:"
    assert [line.split(" median")[0].strip() for line in lines] == [
        "query (GetAttr)",
        "command (Setattr of a time)",
    ]
    assert all(float(line.split()[-2]) > 0 for line in lines)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("files", [applybench.WARMUP, applybench.MAX_FILES + 1])
def test_parts_refuses_a_number_of_files_it_cannot_time(tmp_path: Path, files: int) -> None:
    """None left after the warm-up, or more than one reservation of inode numbers covers:
    a one-line error, not a traceback."""
    command = [sys.executable, "-m", "ringfs.tools", "bench", str(tmp_path), "--parts"]
    done = subprocess.run([*command, "--files", str(files)], capture_output=True, text=True)
    assert done.returncode != 0
    assert (
        done.stderr.strip() == f"ringfs: --parts needs --files from 201 to {applybench.MAX_FILES}"
    )
    assert list(tmp_path.iterdir()) == []
