"""The code passes `mypy --strict` and ruff, checked as part of the test run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fs", "node", "tools")


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[test]')")


def test_mypy_strict(tmp_path: Path) -> None:
    _require("mypy")
    # The folders install as ringfs.fs, ringfs.node, ringfs.tools; give mypy that layout.
    package = tmp_path / "ringfs"
    package.mkdir()
    (package / "__init__.py").touch()
    for name in PACKAGES:
        (package / name).symlink_to(ROOT / name)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "-p",
            "ringfs",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff() -> None:
    _require("ruff")
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", *PACKAGES, "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
