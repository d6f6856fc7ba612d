"""What the intake fault tests share: raw producing, per-partition progress, dead letters, and the
exact check of ClickHouse against the independent recomputation (``tests/integration/expected.py``)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CoordinatorNotAvailableError, GroupCoordinatorNotAvailableError, NotCoordinatorError

from sinks.client import close, connect
from streams.settings import Settings
from streams.wire.codec import Decoder
from tests.integration.expected import MICRO, expected
from tests.integration.harness import Worker

# (key, value, headers, partition or None for the default partitioner)
Raw = tuple[bytes | None, bytes, list[tuple[str, bytes]], int | None]


@pytest.fixture
def settings(topic_settings: Settings, tmp_path: Path) -> Settings:
    return topic_settings.model_copy(update={
        "clickhouse_url": f"chdb://{tmp_path / 'clickhouse'}",
        "sink_flush_seconds": 0.5,
        "process_batch": 400,
    })


def send_raw(settings: Settings, topic: str, records: Iterable[Raw]) -> None:
    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all",
                                    enable_idempotence=True)
        await producer.start()
        try:
            for key, value, headers, partition in records:
                await producer.send(settings.topic(topic), value, key=key, headers=headers, partition=partition)
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(run())


def partition_lag(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """Records of each partition of ``topic`` not yet committed by ``group``."""
    async def run() -> dict[int, int]:
        bootstrap = settings.kafka_bootstrap_servers
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await admin.start()
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            if not tps:
                await consumer._client.force_metadata_update()
                tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            ends = await consumer.end_offsets(tps)
            committed = await admin.list_consumer_group_offsets(group)
            out = {}
            for tp in tps:
                done = committed.get(tp)
                out[tp.partition] = ends[tp] - (done.offset if done is not None and done.offset >= 0 else 0)
            return out
        finally:
            await consumer.stop()
            await admin.close()

    try:
        return asyncio.run(run())
    except (GroupCoordinatorNotAvailableError, CoordinatorNotAvailableError, NotCoordinatorError):
        return {-1: 1 << 62}  # the group coordinator is not up yet: nothing known committed


def read_topic(settings: Settings, topic: str, timeout: float = 10) -> list[Any]:
    """Every record of ``topic`` now (read to the end offsets)."""
    async def run() -> list[Any]:
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            await consumer._client.force_metadata_update()
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            out: list[Any] = []
            deadline = time.monotonic() + timeout
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                assert time.monotonic() < deadline, f"could not read {topic} to its end"
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    out.extend(records)
            return out
        finally:
            await consumer.stop()

    return asyncio.run(run())


def dead_letters(settings: Settings) -> list[dict[str, Any]]:
    decoder = Decoder("DeadLetter")
    return [decoder.decode(r.value) for r in read_topic(settings, settings.topic("dead-letters")) if r.value]


def query(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    return list(connect(settings.resolved_clickhouse_url).query(sql).result_rows)


def verify_exact(settings: Settings, events: list[dict[str, Any]], grants: list[dict[str, Any]]) -> None:
    """Every event exactly once in events, rollups and ledger, per-account totals and each grant's
    burn-down equal to the recomputation. Read after every worker holding chDB has exited."""
    want = expected(events, grants)
    try:
        count, distinct = query(settings, "SELECT count(), uniqExact(event_id) FROM events")[0]
        assert (count, distinct) == (len(events), len(events)), "events must land exactly once"
        dupes = query(settings, "SELECT event_id FROM events GROUP BY event_id HAVING count() > 1 LIMIT 5")
        assert not dupes, dupes
        rows = query(settings, "SELECT account_id, category, count(), sum(list_micro), sum(charged_micro), "
                               "sum(subsidy_micro) FROM events GROUP BY account_id, category")
        got = {(a, c): (n, Decimal(lst) * MICRO, Decimal(ch) * MICRO, Decimal(sub) * MICRO)
               for a, c, n, lst, ch, sub in rows}
        assert got == {k: (t.events, t.list_credits, t.charged, t.subsidy)
                       for k, t in want.by_account_category.items()}
        raw = query(settings, "SELECT count(), sum(list_micro), sum(charged_micro), sum(subsidy_micro) FROM events")[0]
        for table in ("usage_minute", "usage_hour"):
            r = query(settings, f"SELECT sum(requests), sum(list_micro), sum(charged_micro), sum(subsidy_micro) "
                                f"FROM {table}")[0]
            assert tuple(r) == tuple(raw), table
        used = dict(query(settings, "SELECT grant_id, sum(amount_micro) FROM credit_ledger GROUP BY grant_id"))
        assert {g: Decimal(v) * MICRO for g, v in used.items()} == {
            g: v for g, v in want.grant_used.items() if v > 0}
        funded = dict(query(settings, "SELECT event_id, grant_funded_micro FROM events"))
        assert {e: Decimal(v) * MICRO for e, v in funded.items()} == want.grant_funded_by_event
    finally:
        close(settings.resolved_clickhouse_url)


def dead_letter_kinds(settings: Settings) -> Counter[str]:
    try:
        return Counter(dict(query(settings, "SELECT error_kind, count() FROM dead_letters FINAL GROUP BY error_kind")))
    finally:
        close(settings.resolved_clickhouse_url)


def wait_until(what: str, check: Any, workers: list[Worker], timeout: float = 180, every: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in workers:
            assert w.alive, f"worker {w.name} died:\n{w.log_tail()}"
        if check():
            return
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f}s\n" + "\n".join(w.log_tail() for w in workers))
