"""The benchmark harness, end to end on a tiny workload, so it cannot rot. No speed assertions:
only that every stage ran, produced its figures and the files were written."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.benchmarks import run

pytestmark = pytest.mark.integration

STAGE_FIGURES = ("processor", "sink", "all", "scaling_2", "handwritten", "clickhouse_kafka")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_benchmark_smoke(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    spawned: list[int] = []
    original_spawn = run.Bench.spawn

    async def tracking_spawn(self: run.Bench, module: str, cfg: dict, name: str):  # type: ignore[no-untyped-def]
        proc, log = await original_spawn(self, module, cfg, name)
        spawned.append(proc.pid)
        return proc, log

    run.Bench.spawn = tracking_spawn  # type: ignore[method-assign]
    try:
        results = run.main([
            "--events", "2000", "--runs", "1", "--accounts", "200", "--rss-accounts", "2000",
            "--latency-seconds", "2", "--latency-warmup", "0.5", "--profile-events", "2000", "--run-timeout", "90",
            "--stages", ",".join(run.STAGES), "--bootstrap", kafka_bootstrap, "--out", str(out),
        ])
    finally:
        run.Bench.spawn = original_spawn  # type: ignore[method-assign]
        for pid in spawned:  # belt and braces: the harness stops its processes itself
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)

    figures = results["figures"]
    for stage in STAGE_FIGURES:
        assert "unavailable" not in figures[stage], (stage, figures[stage].get("unavailable"))
        assert figures[stage]["eps"]["median"] > 0, stage
    for stage in ("processor", "sink", "all", "handwritten"):
        assert figures[stage]["cpu_per_million"]["median"] > 0, stage
        assert figures[stage]["peak_rss_mib"]["median"] > 0, stage
    lat = figures["latency"]
    assert "unavailable" not in lat, lat
    assert lat["p99_ms"]["median"] >= lat["p50_ms"]["median"] >= 0
    # The warm-up is left out of the headline figures only: the whole run is reported too.
    assert lat["p99_with_warmup_ms"]["median"] >= 0 and lat["max_with_warmup_ms"]["median"] >= lat["max_ms"]["median"]
    run_lat = lat["runs"][0]
    assert run_lat["rows"] < run_lat["events"] and sum(c for _, c, _ in run_lat["p99_by_second"]) == run_lat["events"]
    fresh = figures["freshness"]
    assert "unavailable" not in fresh, fresh
    assert fresh["topic_p99_ms"]["median"] >= fresh["topic_p50_ms"]["median"] > 0
    assert fresh["lookup_p99_ms"]["median"] >= fresh["lookup_p50_ms"]["median"] > 0
    assert fresh["runs"][0]["topic_unseen"] == 0 and fresh["runs"][0]["lookup_missed"] == 0
    assert figures["accounts_1m"]["peak_rss_mib"]["median"] > 0
    assert figures["clickhouse_kafka"]["pricing_check"]["checked"] > 0
    assert figures["clickhouse_kafka"]["pricing_check"]["mismatches"] == 0
    profile = figures["profile"]
    assert profile["pyinstrument"].get("categories") or profile["pyinstrument"].get("unavailable"), profile
    assert profile["micro_us_per_event"]["decode"] > 0
    assert results["ratios"]["vs_handwritten"] > 0
    # The machine's speed, probed before the first stage, after each one and at the end.
    speed = results["machine_speed"]
    assert [p["after"] for p in speed["points"]] == [
        "start", "processor", "sink", "all", "handwritten", "clickhouse_kafka", "latency", "freshness", "scaling",
        "accounts", "end"]
    assert speed["min"] > 0 and speed["drift"] >= 0
    assert any(n.startswith("machine speed probe moved") for n in results["notes"])
    assert "machine speed probe" in (out / "bench.md").read_text()

    written = json.loads((out / "bench.json").read_text())
    assert written["events"] == 2000 and written["environment"]["python"]
    assert (out / "bench.md").read_text().startswith("| figure")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        assert (out / "bench.png").stat().st_size > 0
    assert not [pid for pid in spawned if _alive(pid)], "benchmark left processes running"
