"""Fixtures shared by the integration tests: the workers a test starts, stopped whatever happened."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from tests.integration.harness import Worker


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Append the workers a test starts; each is stopped after it, a frozen one thawed first (a
    stopped process cannot take SIGTERM)."""
    started: list[Worker] = []
    yield started
    for w in started:
        if w.proc is not None and w.proc.poll() is None:
            os.killpg(w.proc.pid, signal.SIGCONT)
        w.stop(timeout=30)
