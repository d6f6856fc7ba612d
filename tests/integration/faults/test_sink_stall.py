"""A sink frozen past its session timeout while it stores (SIGSTOP: a long GC pause, a VM freeze,
a network partition), then resumed: its session expired and its partitions come back to it (or,
with a ClickHouse server, to another sink) while a store was in flight. Every event must still be
in ClickHouse exactly once: events, both rollups and the ledger, checked against an independent
recomputation. Real worker subprocesses, the real broker and the real ClickHouse engine (chDB)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from sinks.client import close
from streams.runtime.topics import ensure_topics
from streams.settings import Settings
from tests.integration.harness import Worker, group_lag, wait_drained
from tests.integration.test_pipeline import _produce, _query, _verify_exact, _wait_grants_applied, _workload

pytestmark = pytest.mark.integration

# Past the sink's 10 s session timeout, so the broker evicts it for sure.
STALL_S = 12.0


@pytest.fixture
def settings(topic_settings: Settings, tmp_path: Path) -> Settings:
    return topic_settings.model_copy(update={
        "clickhouse_url": f"chdb://{tmp_path / 'clickhouse'}",
        # Short flushes: the sink is in the middle of a store most of the time.
        "sink_flush_seconds": 0.3,
        "process_batch": 400,
    })


def _stall(worker: Worker, seconds: float) -> None:
    assert worker.proc is not None and worker.alive, worker.log_tail()
    os.killpg(worker.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.killpg(worker.proc.pid, signal.SIGCONT)


def _stall_mid_store(worker: Worker, spool: Path, seconds: float, min_bytes: int, seen: set[str],
                     timeout: float = 90) -> None:
    """SIGSTOP the sink while a store is in flight: the sink hands each usage-enriched store to
    ClickHouse as an Avro file in its spool directory and deletes it once both inserts returned.
    A big store is still running when the resumed sink rejoins its group."""
    assert worker.proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.alive, worker.log_tail()
        for path in spool.glob("creditflow-sink-*/*.avro"):
            if path.name in seen:
                continue  # the store frozen before: this stall must catch another one
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if size >= min_bytes:
                seen.add(path.name)
                _stall(worker, seconds)
                return
        time.sleep(0.002)
    raise AssertionError("the sink never stored a big enough batch while watched:\n" + worker.log_tail())


def _processor_drained(settings: Settings, processor: Worker, timeout: float = 240) -> None:
    topics = [settings.topic("interaction-events"), settings.topic("credit-grants")]
    deadline = time.monotonic() + timeout
    while group_lag(settings.kafka_bootstrap_servers or "", f"{settings.app_id}-processor", topics) != 0:
        assert processor.alive and time.monotonic() < deadline, processor.log_tail()
        time.sleep(0.5)


def test_a_sink_stalled_past_its_session_while_storing_counts_every_event_once(
        settings: Settings, workers: list[Worker], tmp_path: Path) -> None:
    gen, grants, all_events = _workload(200, 48_000, 41, "stall")
    events, more = all_events[:40_000], all_events[40_000:]
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers or "", settings))
    processor = Worker(settings, "processor", tmp_path, "processor").start()
    workers.append(processor)
    _produce(settings, grants, [])
    _wait_grants_applied(settings, processor)
    # The sink starts behind the whole metered backlog, so its stores are big: the frozen one is
    # still inserting when the resumed sink has rejoined its group and re-reads its offsets.
    _produce(settings, [], events)
    _processor_drained(settings, processor)
    spool = tmp_path / "sink-tmp"
    spool.mkdir()
    sink = Worker(settings, "sink", tmp_path, "sink", TMPDIR=str(spool)).start()
    workers.append(sink)
    seen: set[str] = set()
    _stall_mid_store(sink, spool, STALL_S, min_bytes=8 << 20, seen=seen)
    # Events keep coming while the resumed sink rejoins and replays; a second stall hits one of
    # the stores after the rejoin.
    producer = threading.Thread(target=_produce, args=(settings, [], more, 2_000.0), daemon=True)
    producer.start()
    _stall_mid_store(sink, spool, STALL_S, min_bytes=1 << 18, seen=seen)
    producer.join(timeout=120)
    assert not producer.is_alive()
    wait_drained(settings, workers, timeout=240)
    log = sink.log_path.read_text(errors="replace")
    assert processor.stop() == 0, processor.log_tail()
    assert sink.stop() == 0, sink.log_tail()
    assert "Traceback" not in log, sink.log_tail(80)
    _verify_exact(settings, gen, all_events, grants)
    try:
        # No ledger row twice either (the per-grant sums above would hide a doubled zero debit).
        rows, distinct = _query(settings, "SELECT count(), uniqExact(event_id, grant_id) FROM credit_ledger")[0]
        assert rows == distinct
    finally:
        close(settings.resolved_clickhouse_url)
