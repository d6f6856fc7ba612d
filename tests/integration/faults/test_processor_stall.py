"""Fault: a processor paused (SIGSTOP) past its session timeout while another takes its partitions
over, then resumed (SIGCONT). The paused worker must write nothing more for the partitions it lost
(``streams/runtime/checkpoint.py``): every event exactly once in ClickHouse, totals and ledger equal
to the independent recomputation."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sinks.client import close
from streams.runtime.topics import ensure_topics
from streams.settings import Settings
from tests.integration.expected import MICRO, expected
from tests.integration.harness import Worker, group_lag, wait_drained
from tests.integration.test_pipeline import _produce, _query, _verify_exact, _wait_grants_applied, _workload

pytestmark = pytest.mark.integration

SESSION_TIMEOUT_S = 10  # the processors' consumer session (streams/runtime/partitioned.py)


@pytest.fixture
def settings(topic_settings: Settings, tmp_path: Path) -> Settings:
    return topic_settings.model_copy(update={
        "clickhouse_url": f"chdb://{tmp_path / 'clickhouse'}",
        "sink_flush_seconds": 0.5,
        # Small batches: the paused worker is likely to hold fetched records and a batch in flight.
        "process_batch": 300,
    })


def _signal(worker: Worker, sig: signal.Signals) -> None:
    assert worker.proc is not None and worker.alive, worker.log_tail()
    os.killpg(worker.proc.pid, sig)


def _wait_until(condition: object, what: str, timeout: float, worker: Worker) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.alive, worker.log_tail()
        if callable(condition) and condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout}s:\n{worker.log_tail()}")


def _verify_balances(settings: Settings, events: list[dict[str, Any]], grants: list[dict[str, Any]]) -> None:
    """Every ledger row's balance after the debit equals the recomputation's: an account's state
    overwritten by an older copy (a paused worker's late write) shows here even when the amounts
    debited still agree."""
    want = expected(events, grants).balance_after
    try:
        rows = _query(settings, "SELECT event_id, grant_id, balance_after_micro FROM credit_ledger")
        got = {(e, g): Decimal(b) * MICRO for e, g, b in rows}
        assert len(rows) == len(got), "one ledger row per event and grant"
        wrong = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
        assert not wrong and got.keys() == want.keys(), f"{len(wrong)} balances differ, e.g. {list(wrong.items())[:3]}"
    finally:
        close(settings.resolved_clickhouse_url)


def test_a_processor_paused_past_its_session_writes_nothing_for_lost_partitions(
        settings: Settings, workers: list[Worker], tmp_path: Path) -> None:
    gen, grants, events = _workload(120, 12_000, 47, "stall")
    bootstrap = settings.kafka_bootstrap_servers or ""
    asyncio.run(ensure_topics(bootstrap, settings))
    sink = Worker(settings, "sink", tmp_path, "sink").start()
    paused = Worker(settings, "processor", tmp_path, "paused").start()
    taker = Worker(settings, "processor", tmp_path, "taker").start()
    workers.extend([sink, paused, taker])
    _produce(settings, grants, [])
    _wait_grants_applied(settings, paused)

    producer = threading.Thread(target=_produce, args=(settings, [], events, 200.0), daemon=True)
    producer.start()
    events_topic = settings.topic("interaction-events")
    group = f"{settings.app_id}-processor"
    for _ in range(2):
        time.sleep(4.0)
        _signal(paused, signal.SIGSTOP)
        # The paused member's session expires and the other one takes every partition over: it
        # commits past where the paused one stopped.
        time.sleep(SESSION_TIMEOUT_S + 2)
        _wait_until(lambda: group_lag(bootstrap, group, [events_topic]) < 300,
                    "the second processor took the partitions over", 120, taker)
        time.sleep(3.0)
        # Resumed: it still holds fetched records and maybe a batch in flight for partitions that
        # are not its own any more; then it rejoins and gets some back (their state from the changelog).
        _signal(paused, signal.SIGCONT)
    producer.join(timeout=180)
    assert not producer.is_alive()
    wait_drained(settings, workers, timeout=300)
    for w in (paused, taker, sink):
        assert w.stop() == 0, w.log_tail()
    _verify_exact(settings, gen, events, grants)
    _verify_balances(settings, events, grants)
