"""Output of a benchmark run: the rich table, the JSON file and the PNG chart."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[2]


def summary(values: Sequence[float]) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "runs": 0, "values": []}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": len(vals),
            "values": vals}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment() -> dict[str, Any]:
    from deploy.kafka.launcher import KAFKA_VERSION

    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    status = _git("status", "--porcelain")
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("faust-streaming", "aiokafka", "chdb", "chdb-core",
                                             "clickhouse-connect", "fastavro", "mode-streaming", "rich",
                                             "matplotlib", "pyinstrument")},
        "kafka": KAFKA_VERSION,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
    }


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        text = f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"
    else:
        text = f"{v:,}" if isinstance(v, int) else str(v)
    return f"{text}{unit}"


def run_line(name: str, run: dict[str, Any], elapsed_s: float) -> str:
    """One line per measured run, printed as it ends: the only progress a log file or CI output gets
    (rich draws its bars on a terminal alone) and the figures before the table, 25 minutes later."""
    if "error" in run:
        return f"{name}: FAILED after {elapsed_s:,.0f} s: {run['error']}"
    parts: list[str] = []
    if run.get("eps") is not None:
        parts.append(f"{_fmt(float(run['eps']))} events/s")
    if run.get("p99_ms") is not None:
        parts.append(f"p50 {_fmt(float(run['p50_ms']))} ms, p99 {_fmt(float(run['p99_ms']))} ms"
                     f" at {_fmt(float(run['achieved_rate']))}/s")
    if run.get("topic_p99_ms") is not None or run.get("lookup_p99_ms") is not None:
        parts.append(f"balance visible: lookup p50 {_fmt(run.get('lookup_p50_ms'))} ms, "
                     f"p99 {_fmt(run.get('lookup_p99_ms'))} ms; topic p50 {_fmt(run.get('topic_p50_ms'))} ms, "
                     f"p99 {_fmt(run.get('topic_p99_ms'))} ms at {_fmt(float(run['achieved_rate']))}/s")
    if run.get("cpu_per_million"):
        parts.append(f"{_fmt(float(run['cpu_per_million']))} CPU-s per 1M")
    if run.get("peak_rss_mib") is not None:
        parts.append(f"peak RSS {_fmt(float(run['peak_rss_mib']))} MiB")
    return f"{name}: {', '.join(parts) or 'done'} ({elapsed_s:,.0f} s)"


def table_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """(figure, median, min, max, bar, verdict) rows shared by the terminal and README tables."""
    rows: list[tuple[str, str, str, str, str, str]] = []
    bars = {b["figure"]: b for b in results.get("bars", [])}

    def add(label: str, s: dict[str, Any] | None, unit: str, key: str | None = None) -> None:
        if not s:
            return
        bar = bars.get(key or label)
        verdict = "" if bar is None else ("PASS" if bar["ok"] else ("FAIL" if bar["ok"] is False else "n/a"))
        rows.append((label, _fmt(s.get("median"), unit), _fmt(s.get("min"), unit), _fmt(s.get("max"), unit),
                     bar["text"] if bar else "", verdict))

    f = results.get("figures", {})
    for key, label in (("processor", "processor role"), ("sink", "sink role"), ("all", "all roles, 1 process"),
                       ("scaling_2", "processor, 2 workers (total)"), ("handwritten", "peer: hand-written loop"),
                       ("clickhouse_kafka", "peer: ClickHouse Kafka engine")):
        stage = f.get(key)
        if stage is None:
            continue
        if stage.get("unavailable"):
            rows.append((f"{label} events/s", "n/a", "", "", stage["unavailable"][:60], ""))
            continue
        add(f"{label} events/s", stage.get("eps"), "", key)
    for key, label in (("processor", "processor"), ("sink", "sink"), ("all", "all roles"),
                       ("handwritten", "hand-written"), ("clickhouse_kafka", "CH Kafka engine")):
        stage = f.get(key)
        if stage and not stage.get("unavailable"):
            add(f"{label} CPU s / 1M events", stage.get("cpu_per_million"), " s")
            add(f"{label} peak RSS", stage.get("peak_rss_mib"), " MiB")
    lat = f.get("latency")
    if lat:
        add(f"latency p50 @ {lat.get('rate', 0):,.0f}/s", lat.get("p50_ms"), " ms")
        add(f"latency p99 @ {lat.get('rate', 0):,.0f}/s", lat.get("p99_ms"), " ms", "latency")
        add("latency max", lat.get("max_ms"), " ms")
        warm = lat.get("warmup_s")
        if warm:
            add(f"  p99 incl. the first {warm:g} s (warm-up)", lat.get("p99_with_warmup_ms"), " ms")
            add("  max incl. warm-up", lat.get("max_with_warmup_ms"), " ms")
        add("  of which: send -> processor batch p50", lat.get("to_processor_p50_ms"), " ms")
        add("  of which: send -> processor batch p99", lat.get("to_processor_p99_ms"), " ms")
        add("  of which: processor batch -> visible p50", lat.get("processor_to_visible_p50_ms"), " ms")
        add("  of which: processor batch -> visible p99", lat.get("processor_to_visible_p99_ms"), " ms")
        add("  sink store (plans + inserts) p50", lat.get("store_p50_ms"), " ms")
        add("  sink store (plans + inserts) p99", lat.get("store_p99_ms"), " ms")
    fresh = f.get("freshness")
    if fresh and not fresh.get("unavailable"):
        rate = f"{fresh.get('rate', 0):,.0f}/s"
        add(f"balance freshness, lookup p50 @ {rate}", fresh.get("lookup_p50_ms"), " ms")
        add(f"balance freshness, lookup p99 @ {rate}", fresh.get("lookup_p99_ms"), " ms", "freshness")
        add(f"balance freshness, topic p50 @ {rate}", fresh.get("topic_p50_ms"), " ms")
        add(f"balance freshness, topic p99 @ {rate}", fresh.get("topic_p99_ms"), " ms", "freshness")
    acc = f.get("accounts_1m")
    if acc:
        add(f"processor peak RSS, {acc.get('accounts', 0):,} accounts", acc.get("peak_rss_mib"), " MiB",
            "accounts_1m")
    speed = results.get("machine_speed")
    if speed and speed.get("runs"):
        add(f"machine speed probe, CPU-µs/event ({speed['runs']} points)", speed, " µs")
    for key, label in (("vs_handwritten", "processor / hand-written"), ("all_vs_handwritten",
                                                                       "all roles / hand-written"),
                       ("vs_clickhouse_kafka", "all roles / CH Kafka engine"),
                       ("scaling", "2 workers / 1 worker")):
        r = results.get("ratios", {}).get(key)
        if r is not None:
            add(label, {"median": r, "min": None, "max": None}, "x", key)
    return rows


def print_table(console: Console, results: dict[str, Any]) -> None:
    env = results["environment"]
    t = Table(title=f"creditflow benchmark — {results['events']:,} events, {results['runs']} run(s) per figure, "
                    f"{env['cpu_count']} CPU ({env['cpu_model']})")
    for i, h in enumerate(("figure", "median", "min", "max", "bar", "")):
        t.add_column(h, justify="left" if i in (0, 4) else "right")
    for row in table_rows(results):
        style = "green" if row[5] == "PASS" else "red" if row[5] == "FAIL" else None
        t.add_row(*row, style=style)
    console.print(t)
    for note in results.get("notes", []):
        console.print(f"[dim]- {note}[/dim]")


def markdown_table(results: dict[str, Any]) -> str:
    lines = ["| figure | median | min | max | bar | |", "|---|---:|---:|---:|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(results)]
    return "\n".join(lines) + "\n"


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")


def write_chart(path: Path, results: dict[str, Any]) -> str | None:
    """Throughput (with min-max whiskers) and latency; returns why not when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on CI or a server
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (proposed as a dev dependency); no chart written"
    f = results.get("figures", {})
    labels, med, lo, hi = [], [], [], []
    for key, label in (("processor", "processor"), ("scaling_2", "processor x2"), ("sink", "sink"),
                       ("all", "all roles"), ("handwritten", "hand-written"),
                       ("clickhouse_kafka", "CH Kafka engine")):
        s = (f.get(key) or {}).get("eps")
        if s and s.get("median"):
            labels.append(label)
            med.append(s["median"])
            lo.append(s["median"] - s["min"])
            hi.append(s["max"] - s["median"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    ax1.bar(labels, med, yerr=[lo, hi], capsize=4, color="#4C72B0")
    ax1.set_ylabel("events / s (median, min-max)")
    ax1.set_title(f"drain throughput, {results['events']:,} events")
    ax1.tick_params(axis="x", rotation=20)
    lat = f.get("latency") or {}
    # p99 per second of production, one line per run: start-up and steady state, against the bar.
    for i, run in enumerate(r for r in lat.get("runs", []) if r.get("p99_by_second")):
        secs = [row[0] for row in run["p99_by_second"]]
        ax2.plot(secs, [row[2] for row in run["p99_by_second"]], marker=".", linewidth=1, label=f"run {i + 1}")
    warm = lat.get("warmup_s")
    if warm:
        ax2.axvspan(0, warm, color="grey", alpha=0.15, label=f"warm-up ({warm:g} s, not in p99)")
    ax2.axhline(2000, color="red", linestyle="--", linewidth=1, label="p99 bar (2 s)")
    p99 = (lat.get("p99_ms") or {}).get("median")
    ax2.set_xlabel("second of production")
    ax2.set_ylabel("p99 ms, production to visible in ClickHouse")
    ax2.set_title(f"latency @ {lat.get('rate', 0):,.0f} events/s" + (f", p99 {p99:,.0f} ms" if p99 else ""))
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
