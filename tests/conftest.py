"""Checks every test gets: an unexpected log record at WARNING or above fails it."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from ringfs.tools.local import free_ports

__all__ = ["free_ports"]


@pytest.fixture(autouse=True)
def expected_logs(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """Any WARNING or worse fails the test unless its message contains an expected text.

    A test that provokes a warning on purpose appends a piece of its message to this list.
    """
    expected: list[str] = []
    yield expected
    unexpected = [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for when in ("setup", "call", "teardown")
        for r in caplog.get_records(when)  # type: ignore[arg-type]
        if r.levelno >= logging.WARNING and not any(text in r.getMessage() for text in expected)
    ]
    assert unexpected == []
