"""Fault: a platform service resends events (same ``event_id``, e.g. a retry after a timeout). Each
event is metered and debited once; every resend is kept as a DUPLICATE dead letter."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sinks.client import close
from streams.runtime.topics import ensure_topics
from streams.settings import Settings
from streams.wire.codec import Decoder
from tests.integration.harness import Worker, wait_drained
from tests.integration.test_pipeline import _produce, _query, _verify_exact, _wait_grants_applied, _workload

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(topic_settings: Settings, tmp_path: Path) -> Settings:
    return topic_settings.model_copy(update={
        "clickhouse_url": f"chdb://{tmp_path / 'clickhouse'}",
        "sink_flush_seconds": 0.5,
        "process_batch": 500,
    })


def _with_resends(events: list[dict[str, Any]], resends: int, seed: int) -> tuple[list[dict[str, Any]],
                                                                                list[dict[str, Any]]]:
    """The events in order with ``resends`` copies of earlier ones mixed in after them (some resent
    more than once), as a retrying client sends them; and the resent copies."""
    rng = random.Random(seed)
    later: dict[int, list[dict[str, Any]]] = {}
    copies = []
    for _ in range(resends):
        first = rng.randrange(len(events) - 1)
        at = rng.randrange(first + 1, len(events) + 1)
        later.setdefault(at, []).append(events[first])
        copies.append(events[first])
    sent: list[dict[str, Any]] = []
    for i, ev in enumerate(events):
        sent.extend(later.get(i, ()))
        sent.append(ev)
    sent.extend(later.get(len(events), ()))
    return sent, copies


def test_resent_events_are_metered_once_and_kept_as_duplicates(settings: Settings, workers: list[Worker],
                                                                tmp_path: Path) -> None:
    gen, grants, events = _workload(150, 5_000, 59, "resend")
    sent, copies = _with_resends(events, 1_000, 61)
    assert len(sent) == 6_000
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers or "", settings))
    worker = Worker(settings, "all", tmp_path, "all").start()
    workers.append(worker)
    _produce(settings, grants, [])
    _wait_grants_applied(settings, worker)
    _produce(settings, [], sent)
    wait_drained(settings, workers)
    assert worker.stop() == 0, worker.log_tail()
    # Metered once: events, rollups, ledger and funding equal the recomputation over the 5,000.
    _verify_exact(settings, gen, events, grants)
    try:
        rows = _query(settings, "SELECT error_kind, lower(hex(original)) FROM dead_letters FINAL")
        assert Counter(kind for kind, _ in rows) == Counter({"DUPLICATE": 1_000})
        decoder = Decoder("InteractionEvent")
        resent_ids = Counter(decoder.decode(bytes.fromhex(original))["event_id"] for _, original in rows)
        assert resent_ids == Counter(ev["event_id"] for ev in copies)
    finally:
        close(settings.resolved_clickhouse_url)
