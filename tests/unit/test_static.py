"""The code passes `mypy --strict` and ruff, checked as part of the test run."""

from __future__ import annotations

import ast
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


# Which rooms of node/ each room may import (besides the shared modules below).
ROOM_IMPORTS = {
    "rpc": set(),
    "cluster": set(),
    "blocks": {"cluster"},
    "raft": {"rpc", "cluster"},
    "meta": {"raft"},
}
SHARED = {"errors", "durable", "checksum"}


def _node_imports(path: Path) -> set[str]:
    """The first component under ringfs.node of every module `path` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["ringfs", "node"] and len(parts) > 2:
                found.add(parts[2])
            if parts[:2] in (["ringfs", "fs"], ["ringfs", "tools"]):
                found.add("/".join(parts[:2]))
    return found


@pytest.mark.parametrize("room", sorted(ROOM_IMPORTS))
def test_node_rooms_import_only_downwards(room: str) -> None:
    for path in sorted((ROOT / "node" / room).glob("*.py")):
        imported = _node_imports(path) - SHARED - {room}
        assert imported <= ROOM_IMPORTS[room], f"{path.name} imports {sorted(imported)}"


def test_every_module_imports_first() -> None:
    """Each module imports on its own, in a fresh interpreter: an import cycle fails only
    when the wrong module of it comes first, which a test run's order may never try."""
    modules = [
        ".".join(("ringfs", *path.relative_to(ROOT).with_suffix("").parts))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.name not in ("__init__.py", "__main__.py")
    ]
    runs = {
        module: subprocess.Popen(
            [sys.executable, "-c", f"import {module}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for module in modules
    }
    errors = {module: run.communicate()[1] for module, run in runs.items()}
    failed = {module: errors[module][-300:] for module, run in runs.items() if run.returncode}
    assert failed == {}
