"""`creditflow demo` end to end, and Ctrl-C leaving nothing behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.integration.browser import dump_dom

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
    landed = re.search(r"([\d,]+) of ([\d,]+) events landed", out)
    assert landed and landed.group(1) == landed.group(2) and int(landed.group(1).replace(",", "")) > 3000, out
    for heading in ("credits by feature category", "grant utilisation by campaign", "EXTENDED_CONTEXT",
                    "data-collection priority", "refinement samples", "gaming alerts by rule",
                    "one alert, explained", "live SQL", "creditflow report"):
        assert heading in out, out
    # Planted schemes are caught by their own rules, and the summary names them.
    for rule, scheme in (("CF-001", "round_the_clock"), ("CF-008", "replayed_prompts")):
        assert re.search(rf"{rule}.*{scheme}", out), out
    assert re.search(r"http://127\.0\.0\.1:\d+", out)
    assert _leftovers(tmp_path) == []

    # Right after the demo, the report's default window shows its data.
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "CLICKHOUSE_URL")}
    env["CREDITFLOW_DATA_DIR"] = str(tmp_path / "data")
    report = subprocess.run([sys.executable, "-m", "streams.cli.main", "report", "--format", "json"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=180)
    assert report.returncode == 0, report.stderr
    sections = json.loads(report.stdout)
    assert sum(int(r["requests"]) for r in sections["credits by feature"]) == int(landed.group(1).replace(",", ""))
    assert sections["alert volume and verdicts"], "no alerts in the report after the demo"
    assert len(sections["programme scorecard: credit recipients vs the others"]) == 4

    # The HTML report renders in headless Chromium, every chart drawn, nothing fetched.
    page = tmp_path / "report.html"
    written = subprocess.run([sys.executable, "-m", "streams.cli.main", "report", "--html", str(page)], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=180)
    assert written.returncode == 0, written.stderr
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), "the page must not fetch anything"
    dom = dump_dom(page)
    body_tag = re.search(r"<body[^>]*>", dom)
    assert body_tag and "data-chart-error" not in body_tag.group(0), body_tag
    figures = re.findall(r'<figure class="chart" data-chart="(\w+)">(.*?)</figure>', dom, flags=re.S)
    assert [name for name, _ in figures][:1] == ["scorecard"] and len(figures) >= 10
    assert f'data-charts-drawn="{len(figures)}"' in body_tag.group(0)
    for name, body in figures:
        svg = re.search(r"<svg.*?</svg>", body, flags=re.S)
        assert svg, f"chart {name} drew no SVG"
        assert len(re.findall(r"<(rect|circle|polyline|path)\b[^>]*data-mark", svg.group(0))) > 0, name


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


def test_demo_serve_keeps_live_sql_up_until_ctrl_c(tmp_path: Path) -> None:
    proc = _demo(tmp_path, "--events", "500", "--accounts", "50", "--serve")
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 300
        seen = ""
        while "until Ctrl-C" not in seen and time.monotonic() < deadline and proc.poll() is None:
            seen += proc.stdout.readline()
        found = re.search(r"live SQL.* at (http://127\.0\.0\.1:\d+) until Ctrl-C", seen)
        assert found, seen
        query = urllib.parse.urlencode({"query": "SELECT count() > 500 FROM events"})
        with urllib.request.urlopen(f"{found.group(1)}/?{query}", timeout=60) as response:
            assert response.read() == b"1\n"
        assert proc.poll() is None, "the demo should still be serving"
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, seen + out
    time.sleep(1)
    assert _leftovers(tmp_path) == [], "a broker or worker outlived the demo"
