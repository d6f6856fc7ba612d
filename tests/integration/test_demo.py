"""`creditflow demo` end to end, and Ctrl-C leaving nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _demo(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "CLICKHOUSE_URL")}
    # Its own data dir: the demo must start (and then stop) its own broker.
    env["CREDITFLOW_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.Popen([sys.executable, "-m", "streams.cli.main", "demo", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _leftovers(tmp_path: Path) -> list[str]:
    out = subprocess.run(["pgrep", "-af", str(tmp_path)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def test_demo_lands_every_event_and_prints_the_summary(tmp_path: Path) -> None:
    proc = _demo(tmp_path, "--events", "3000", "--accounts", "300")
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out
    assert "3,000 of 3,000 events landed" in out
    for heading in ("credits by feature category", "grant utilisation by campaign", "EXTENDED_CONTEXT"):
        assert heading in out
    assert _leftovers(tmp_path) == []


# 0.5 s: while the app is starting (a cancellation there was swallowed, or hung the exit); 5 s:
# while events are produced.
@pytest.mark.parametrize("after_s", [0.5, 5.0])
def test_ctrl_c_stops_everything_the_demo_started(tmp_path: Path, after_s: float) -> None:
    proc = _demo(tmp_path, "--events", "400000", "--accounts", "2000")
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 180
        seen = ""
        # Interrupt ``after_s`` after the demo reports its broker.
        while "kafka 127.0.0.1" not in seen and time.monotonic() < deadline:
            seen += proc.stdout.readline()
        time.sleep(after_s)
        assert proc.poll() is None, seen
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out
    assert "interrupted; stopping what the demo started" in out
    time.sleep(1)
    assert _leftovers(tmp_path) == [], "a broker or worker outlived the demo"
