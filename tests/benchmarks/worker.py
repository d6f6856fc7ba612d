"""One measured creditflow role in its own process: ``python -m tests.benchmarks.worker '<json>'``.

Config keys: mode (processor | sink | all | latency), bootstrap, input_prefix, output_prefix, app_id,
data_dir, expected (rows to wait for; sink/all/latency), profile_out (processor: write a
pyinstrument profile there), progress_every (s), warmup_s (latency: leading seconds of production
left out of the headline figures).

Timing is taken with wrappers around the real code, not by changing it:
- first consume = first ``Meter.meter`` call (processor, all) or first non-empty ``getmany`` of the
  sink's consumer (sink);
- processor runs end when the orchestrator sees every output record in ``usage-enriched`` and sends
  SIGTERM; sink/all/latency runs end when the sink has stored ``expected`` rows in ``events``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from tests.benchmarks.common import cpu_seconds, emit, emit_result, install_split_topics, now, peak_rss_bytes

_STOP_TIMEOUT_S = 30.0


class _Clock:
    """First/last activity of the measured role, shared by the wrappers."""

    def __init__(self) -> None:
        self.first_at: float | None = None
        self.cpu_at_first: float | None = None
        self.metered = 0
        self.meter_calls = 0

    def mark_first(self) -> None:
        if self.first_at is None:
            self.first_at = now()
            self.cpu_at_first = cpu_seconds()


def _instrument_meter(clock: _Clock, on_first: Any = None) -> None:
    from streams.credits.meter import Meter

    original = Meter.meter

    def timed(self: Meter, records: Any, *args: Any, **kwargs: Any) -> Any:
        if clock.first_at is None:
            clock.mark_first()
            if on_first is not None:
                on_first()
        result = original(self, records, *args, **kwargs)
        clock.metered += len(records)
        clock.meter_calls += 1
        return result

    Meter.meter = timed  # type: ignore[method-assign]


def _instrument_sink_consumer(clock: _Clock) -> None:
    from aiokafka import AIOKafkaConsumer

    import sinks.service as service

    class TimedConsumer(AIOKafkaConsumer):  # type: ignore[misc]
        async def getmany(self, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None) -> Any:
            batches = await super().getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)
            if batches and clock.first_at is None:
                clock.mark_first()
            return batches

    service.AIOKafkaConsumer = TimedConsumer  # type: ignore[misc]


def _instrument_sink_stores(durations: list[float]) -> None:
    """Wall time of every sink store (plans + inserts): with a fixed flush age it is the rest of the
    sink's share of latency."""
    from sinks.service import ClickHouseSink

    original = ClickHouseSink._store

    async def timed(self: ClickHouseSink, *args: Any, **kwargs: Any) -> bool:
        t0 = now()
        stored = await original(self, *args, **kwargs)
        durations.append(now() - t0)
        return stored

    ClickHouseSink._store = timed  # type: ignore[method-assign]


def _settings(cfg: dict[str, Any]) -> Any:
    from streams.settings import Role, Settings

    role = {"processor": Role.PROCESSOR, "sink": Role.SINK}.get(cfg["mode"], Role.ALL)
    return Settings(
        kafka_bootstrap_servers=cfg["bootstrap"],
        clickhouse_url=f"chdb://{Path(cfg['data_dir']).resolve() / 'clickhouse'}",
        data_dir=Path(cfg["data_dir"]),
        topic_prefix=cfg["output_prefix"],
        app_id=cfg["app_id"],
        role=role,
        partitions=cfg.get("partitions", 6),
        log_level="WARNING",
        **cfg.get("settings", {}),
    )


async def _wait_assigned(app: Any, sink: Any, timeout: float = 60.0) -> None:
    """Until the processor's and the sink's consumers hold partitions (rebalance done)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        ok = True
        if sink is not None:
            ok = sink.consumer is not None and bool(sink.consumer.assignment())
        processor = getattr(app, "creditflow_processor", None)
        if processor is not None and ok:
            ok = processor.consumer is not None and bool(processor.consumer.assignment())
        if ok:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("partitions were not assigned in time")


async def _stop_app(app: Any) -> None:
    try:
        await asyncio.wait_for(app.stop(), _STOP_TIMEOUT_S)
    except Exception as exc:  # a slow Faust shutdown must not hide the figures already printed
        logging.getLogger("bench").warning("app.stop() did not finish cleanly: %r", exc)


async def _run(cfg: dict[str, Any]) -> dict[str, Any]:
    mode = cfg["mode"]
    clock = _Clock()
    install_split_topics(cfg["input_prefix"], cfg["output_prefix"])
    profiler: Any = None
    profile_missing = None
    if cfg.get("profile_out"):
        try:
            from pyinstrument import Profiler
        except ImportError:  # proposed dev dependency; without it the run still measures
            profile_missing = "pyinstrument is not installed (proposed as a dev dependency)"
        else:
            # Sampling (1 ms), so the profile barely slows the role it describes.
            profiler = Profiler(interval=0.001, async_mode="disabled")
    if mode in ("processor", "all", "latency"):
        _instrument_meter(clock, profiler.start if profiler is not None else None)
    if mode == "sink":
        _instrument_sink_consumer(clock)
    store_seconds: list[float] = []
    if mode == "latency":
        _instrument_sink_stores(store_seconds)

    from sinks.client import connect
    from sinks.migrations import apply_migrations
    from streams.app import create_app

    settings = _settings(cfg)
    if mode != "processor":
        apply_migrations(connect(settings.resolved_clickhouse_url), settings.events_ttl_days)
    app = create_app(settings, cfg["bootstrap"])
    sink = getattr(app, "creditflow_sink", None)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    started_at = now()
    await app.start()
    result: dict[str, Any] = {"mode": mode, "app_started_at": started_at}
    try:
        await _wait_assigned(app, sink)
        emit("READY")
        expected = int(cfg.get("expected") or 0)
        every = float(cfg.get("progress_every", 0.5))
        poll = 0.05
        last_progress = 0.0
        end_at: float | None = None
        cpu_at_end: float | None = None
        while not stop.is_set():
            if sink is not None:
                stored = sink.stats.rows.get("events", 0)
                if expected and stored >= expected:
                    end_at, cpu_at_end = now(), cpu_seconds()
                    break
                units = stored
            else:
                units = clock.metered
            if now() - last_progress >= every:
                emit(f"PROGRESS {units}")
                last_progress = now()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll)
        if end_at is None:  # stopped by the orchestrator (processor runs)
            end_at, cpu_at_end = now(), cpu_seconds()
        if profile_missing:
            result["profile"] = {"unavailable": profile_missing}
        if profiler is not None and profiler.is_running:
            session = profiler.stop()
            result["profile"] = _write_profile(profiler, session, Path(cfg["profile_out"]), clock.metered)
        result.update({
            "first_consume_at": clock.first_at,
            "end_at": end_at,
            "cpu_drain_s": (cpu_at_end or 0.0) - (clock.cpu_at_first or 0.0) if clock.first_at else None,
            "metered": clock.metered,
            "meter_calls": clock.meter_calls,
        })
        if sink is not None:
            count = await sink.query("SELECT count() FROM events")
            result["events_rows"] = int(count[0][0])
            result["sink_rows"] = dict(sink.stats.rows)
            result["sink_batches"] = sink.stats.batches
            if mode == "latency":
                result["latency"] = {**await _latency(sink, float(cfg.get("warmup_s", 0.0))),
                                     **_store_figures(store_seconds)}
            version = await sink.query("SELECT version()")
            result["clickhouse_version"] = version[0][0]
    finally:
        await _stop_app(app)
    result["cpu_total_s"] = cpu_seconds()
    result["peak_rss_bytes"] = peak_rss_bytes()
    return result


async def _latency(sink: Any, warmup_s: float) -> dict[str, Any]:
    # occurred_at was set to the production time by the orchestrator; processed_at is the start of
    # the processor batch that metered the row; inserted_at is the DEFAULT now64(3) that ClickHouse
    # fills when the row's block is inserted. One machine clock. The split tells waiting for a
    # processor batch apart from metering + publishing + the sink's buffering and insert.
    # Events produced in the first ``warmup_s`` seconds are left out of the headline figures, as
    # fixed-rate benchmarks do (OpenMessaging's warm-up phase): the worker's first batches pay
    # one-off costs (topic metadata, first inserts of each table, caches). The whole run's p99 and
    # max are reported next to them.
    # One pass: ``w`` marks the rows after the warm-up, the -If aggregates keep to them.
    rows = await sink.query(
        "WITH (SELECT min(occurred_at) FROM events) AS t0 "
        "SELECT quantileExactIf(0.5)(d, w), quantileExactIf(0.99)(d, w), maxIf(d, w), minIf(d, w), countIf(w), "
        "quantileExactIf(0.5)(q, w), quantileExactIf(0.99)(q, w), quantileExactIf(0.5)(s, w), "
        "quantileExactIf(0.99)(s, w), quantileExact(0.99)(d), max(d) FROM "
        "(SELECT dateDiff('millisecond', occurred_at, inserted_at) AS d, "
        "        dateDiff('millisecond', occurred_at, processed_at) AS q, "
        "        dateDiff('millisecond', processed_at, inserted_at) AS s, "
        "        occurred_at >= addMilliseconds(t0, {warmup_ms:UInt32}) AS w FROM events)",
        {"warmup_ms": int(warmup_s * 1000)},
    )
    p50, p99, mx, mn, n, q50, q99, s50, s99, whole_p99, whole_max = rows[0]
    # p99 per second of production: shows whether a tail is start-up or steady state.
    by_second = await sink.query(
        "WITH (SELECT min(occurred_at) FROM events) AS t0 "
        "SELECT intDiv(dateDiff('millisecond', t0, occurred_at), 1000) AS sec, count(), "
        "quantileExact(0.99)(dateDiff('millisecond', occurred_at, inserted_at)) FROM events "
        "GROUP BY sec ORDER BY sec"
    )
    return {"p50_ms": float(p50), "p99_ms": float(p99), "max_ms": float(mx), "min_ms": float(mn), "rows": int(n),
            "warmup_s": warmup_s, "p99_with_warmup_ms": float(whole_p99), "max_with_warmup_ms": float(whole_max),
            "to_processor_p50_ms": float(q50), "to_processor_p99_ms": float(q99),
            "processor_to_visible_p50_ms": float(s50), "processor_to_visible_p99_ms": float(s99),
            "p99_by_second": [[int(sec), int(count), float(p)] for sec, count, p in by_second]}


def _store_figures(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    ordered = sorted(seconds)
    return {"stores": float(len(ordered)), "store_p50_ms": 1e3 * ordered[len(ordered) // 2],
            "store_p99_ms": 1e3 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "store_max_ms": 1e3 * ordered[-1]}


def _write_profile(profiler: Any, session: Any, out: Path, events: int) -> dict[str, Any]:
    from tests.benchmarks.profile_summary import categorise

    out.mkdir(parents=True, exist_ok=True)
    # Text only: the HTML renderer embeds every sample (~60 MB for 200k events).
    (out / "processor_profile.txt").write_text(profiler.output_text(unicode=False, color=False, show_all=False))
    return categorise(session.root_frame(), events, session.duration)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    logging.basicConfig(level=os.environ.get("CREDITFLOW_BENCH_LOG_LEVEL", "WARNING"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # e.g. CREDITFLOW_BENCH_DEBUG=creditflow.sink,creditflow.processor: per-store and per-batch timings.
    for name in filter(None, os.environ.get("CREDITFLOW_BENCH_DEBUG", "").split(",")):
        logging.getLogger(name.strip()).setLevel(logging.DEBUG)
    try:
        result = asyncio.run(_run(cfg))
    except BaseException as exc:
        emit_result({"mode": cfg.get("mode"), "error": f"{type(exc).__name__}: {exc}"})
        logging.getLogger("bench").exception("worker failed")
        sys.stdout.flush()
        os._exit(1)
    emit_result(result)
    sys.stdout.flush()
    # Faust/aiokafka leave non-daemon helpers behind now and then; the figures are out, so leave.
    os._exit(0)


if __name__ == "__main__":
    main()
