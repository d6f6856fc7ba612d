"""Mis-keyed input against the real broker and ClickHouse engine: events and grants with a null key,
another key, or placed by librdkafka's CRC32 partitioner land on partitions that do not own their
account. Each is forwarded to the owner partition (murmur2 of the account id) and metered there,
once; per-account totals and every grant's burn-down equal the independent recomputation."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import zlib
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sinks.client import close
from streams.runtime.batch_send import KeyPartitions
from streams.runtime.topics import ensure_topics
from streams.settings import Settings
from streams.synthetic.generator import Generator
from streams.wire.codec import encode_single_object
from tests.integration.expected import MICRO, expected
from tests.integration.faults.intake_support import (  # noqa: F401  (fixtures)
    Raw,
    partition_lag,
    query,
    send_raw,
    settings,
    wait_until,
)
from tests.integration.harness import Worker, wait_drained

pytestmark = pytest.mark.integration


def _miskeyed(account: str, value: bytes, i: int, partitions: int) -> Raw:
    """Four producers in turn: keyed by account (murmur2), no key, another key, CRC32 of the key."""
    key = account.encode()
    match i % 4:
        case 0:
            return key, value, [], None
        case 1:
            return None, value, [], i % partitions
        case 2:
            return f"session-{i}".encode(), value, [], None
        case _:
            return key, value, [], zlib.crc32(key) % partitions


def test_miskeyed_events_and_grants_are_metered_once_on_the_owner_partition(
        settings: Settings, workers: list[Worker], tmp_path: Path) -> None:  # noqa: F811
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers or "", settings))
    n = settings.partitions
    parts = KeyPartitions(n)
    gen = Generator(accounts=80, seed=57, account_prefix="miskey")
    grants = gen.grants()
    events = list(gen.events(3_000))
    misplaced = sum(1 for i, ev in enumerate(events)
                    if (r := _miskeyed(ev["account_id"], b"", i, n))[3] is not None
                    and r[3] != parts(ev["account_id"].encode()))
    assert misplaced > 300, "the workload must put many events on partitions that do not own them"

    worker = Worker(settings, "all", tmp_path, "miskeyed").start()
    workers.append(worker)
    send_raw(settings, "credit-grants", [_miskeyed(g["account_id"], encode_single_object(g, "CreditGrant"), i + 1, n)
                                         for i, g in enumerate(grants)])
    group = f"{settings.app_id}-processor"
    wait_until("grants applied", lambda: sum(partition_lag(settings, group, settings.topic("credit-grants"))
                                             .values()) == 0, workers)
    send_raw(settings, "interaction-events",
             [_miskeyed(ev["account_id"], encode_single_object(ev, "InteractionEvent"), i, n)
              for i, ev in enumerate(events)])
    wait_drained(settings, workers, timeout=300)
    assert worker.stop() == 0, worker.log_tail()

    _verify_order_free(settings, events, grants, parts)


def _verify_order_free(settings: Settings, events: list[dict[str, Any]],  # noqa: F811
                       grants: list[dict[str, Any]], parts: KeyPartitions) -> None:
    # Forwarding changes the order an account's events are metered in (Kafka orders only within a
    # partition), so the comparison is of what does not depend on it: every grant covers the whole
    # span of the traffic, hence per-account totals and each grant's burn-down are order-free.
    want = expected(events, grants)
    try:
        count, distinct = query(settings, "SELECT count(), uniqExact(event_id) FROM events")[0]
        assert (count, distinct) == (len(events), len(events)), "each event metered exactly once"
        wrong = query(settings, "SELECT account_id, source_partition FROM events")
        assert [(a, p) for a, p in wrong if p != parts(a.encode())] == [], "metered only on the owner partition"
        rows = query(settings, "SELECT account_id, category, count(), sum(list_micro), sum(charged_micro), "
                               "sum(subsidy_micro) FROM events GROUP BY account_id, category")
        got = {(a, c): (k, Decimal(lst) * MICRO, Decimal(ch) * MICRO, Decimal(sub) * MICRO)
               for a, c, k, lst, ch, sub in rows}
        assert got == {key: (t.events, t.list_credits, t.charged, t.subsidy)
                       for key, t in want.by_account_category.items()}
        used = dict(query(settings, "SELECT grant_id, sum(amount_micro) FROM credit_ledger GROUP BY grant_id"))
        assert {g: Decimal(v) * MICRO for g, v in used.items()} == {
            g: v for g, v in want.grant_used.items() if v > 0}
        funded: dict[str, Decimal] = defaultdict(Decimal)
        for a, v in query(settings, "SELECT account_id, sum(grant_funded_micro) FROM events GROUP BY account_id"):
            funded[a] = Decimal(v) * MICRO
        want_funded: dict[str, Decimal] = defaultdict(Decimal)
        for ev in events:
            want_funded[ev["account_id"]] += want.grant_funded_by_event[ev["event_id"]]
        assert {a: v for a, v in funded.items() if v} == {a: v for a, v in want_funded.items() if v}
        assert sum(funded.values()) > 0
        assert query(settings, "SELECT count() FROM credit_grants FINAL")[0][0] == len(grants)
    finally:
        close(settings.resolved_clickhouse_url)


def test_forwarders_killed_mid_stream_leave_each_event_metered_once(
        settings: Settings, workers: list[Worker], tmp_path: Path) -> None:  # noqa: F811
    """A forwarder killed after sending its forwards but before committing re-sends them when its batch
    is replayed; the owner applies one copy per origin record."""
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers or "", settings))
    n = settings.partitions
    parts = KeyPartitions(n)
    gen = Generator(accounts=80, seed=58, account_prefix="mkkill")
    grants = gen.grants()
    events = list(gen.events(6_000))
    worker = Worker(settings, "all", tmp_path, "miskeyed-kill").start()
    workers.append(worker)
    send_raw(settings, "credit-grants", [(g["account_id"].encode(), encode_single_object(g, "CreditGrant"), [], None)
                                         for g in grants])
    group = f"{settings.app_id}-processor"
    wait_until("grants applied", lambda: sum(partition_lag(settings, group, settings.topic("credit-grants"))
                                             .values()) == 0, workers)
    raws = [_miskeyed(ev["account_id"], encode_single_object(ev, "InteractionEvent"), i, n)
            for i, ev in enumerate(events)]

    def produce() -> None:
        for start in range(0, len(raws), 300):
            send_raw(settings, "interaction-events", raws[start:start + 300])
            time.sleep(0.3)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    rng = random.Random(3)
    kills = 0
    while producer.is_alive() or kills < 3:
        time.sleep(rng.uniform(2.0, 4.0))
        worker.kill()
        kills += 1
        worker.start()
        if kills >= 5:
            break
    producer.join(timeout=180)
    assert not producer.is_alive()
    wait_drained(settings, workers, timeout=300)
    assert worker.stop() == 0, worker.log_tail()
    _verify_order_free(settings, events, grants, parts)
