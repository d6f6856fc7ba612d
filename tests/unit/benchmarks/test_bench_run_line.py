"""The benchmark's line per run: what a log file or CI output shows before the table."""

from __future__ import annotations

from tests.benchmarks.report import run_line


def test_a_drain_run_shows_its_throughput_cpu_and_memory() -> None:
    line = run_line("processor run 2", {"eps": 8097.4, "cpu_per_million": 127.2, "peak_rss_mib": 741.0}, 131.6)
    assert line == "processor run 2: 8,097 events/s, 127 CPU-s per 1M, peak RSS 741 MiB (132 s)"


def test_a_latency_run_shows_its_percentiles_at_the_rate_reached() -> None:
    line = run_line("latency run 1", {"achieved_rate": 3405.2, "p50_ms": 466.0, "p99_ms": 1054.0,
                                      "peak_rss_mib": 900.0}, 24.0)
    assert line == "latency run 1: p50 466 ms, p99 1,054 ms at 3,405/s, peak RSS 900 MiB (24 s)"


def test_a_failed_run_says_so_with_its_reason() -> None:
    line = run_line("sink run 3", {"error": "timed out after 900s; see sink run 3.log"}, 900.0)
    assert line == "sink run 3: FAILED after 900 s: timed out after 900s; see sink run 3.log"
