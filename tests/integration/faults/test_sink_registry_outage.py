"""The sink reads Confluent-framed records of the topics platform services and operators write
(credit-grants, subscription-changes, gaming-reviews) through the schema registry, against the
real broker and chDB, with the registry fake the processor's outage test uses.

Registry up, they land; a bogus id is dead-lettered as UNKNOWN_SCHEMA. Registry down at first: the
partitions that need an unseen id wait at it (single-object records before it land and are
committed, nothing at or after it is committed, nothing is dead-lettered), every other partition
goes on, and once the registry is back every record lands exactly once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CoordinatorNotAvailableError, GroupCoordinatorNotAvailableError, NotCoordinatorError

from schemas.catalogue import get_catalogue
from sinks.client import close, connect
from sinks.migrations import apply_migrations
from sinks.service import ClickHouseSink
from streams.runtime.topics import CREDIT_GRANTS, GAMING_REVIEWS, SUBSCRIPTION_CHANGES, ensure_topics, topic_names
from streams.settings import Settings
from streams.wire.codec import encode_confluent, encode_single_object
from tests.fake_registry import FakeRegistry

pytestmark = pytest.mark.integration

# topic -> (schema, table, id column)
KINDS = {
    CREDIT_GRANTS: ("CreditGrant", "credit_grants", "grant_id"),
    SUBSCRIPTION_CHANGES: ("SubscriptionChange", "subscription_changes", "change_id"),
    GAMING_REVIEWS: ("ReviewDecision", "alert_reviews", "decision_id"),
}
T0 = 1_793_000_000_000


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    fake = FakeRegistry()
    yield fake
    fake.close()


def _record(topic: str, i: int, partition: int) -> dict[str, Any]:
    account = f"acct-{partition}-{i % 7}"
    if topic == CREDIT_GRANTS:
        return {"event_type": "ISSUED", "grant_id": f"g-{partition}-{i}", "account_id": account,
                "campaign": "launch", "amount_micro": (i + 1) * 1_000_000, "granted_at": T0 + i,
                "expires_at": T0 + 86_400_000, "priority": i % 2, "occurred_at": T0 + i, "reason": None}
    if topic == SUBSCRIPTION_CHANGES:
        return {"change_id": f"c-{partition}-{i}", "account_id": account, "change": "UPGRADE",
                "from_plan": "FREE", "to_plan": "PRO", "occurred_at": T0 + i}
    return {"decision_id": f"d-{partition}-{i}", "alert_id": f"a-{partition}-{i}", "dedup_key": None,
            "entity_type": "account", "entity_id": account, "rule_id": "CF001", "verdict": "CONFIRMED",
            "reviewer": "ops", "note": "", "decided_at": T0 + i, "allow_until": None}


def _settings(topic_settings: Settings, tmp_path: Path, registry: FakeRegistry) -> Settings:
    settings = topic_settings.model_copy(update={
        "clickhouse_url": f"chdb://{tmp_path / 'ch'}", "sink_flush_seconds": 0.3,
        "schema_registry_url": registry.url, "registry_wait_seconds": 0.5, "registry_backoff_max_seconds": 1.0})
    apply_migrations(connect(settings.resolved_clickhouse_url), settings.events_ttl_days)
    return settings


async def _produce(settings: Settings, records: list[tuple[str, int, bytes]]) -> None:
    """(topic key, partition, value), in order."""
    await ensure_topics(settings.kafka_bootstrap_servers or "", settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        for topic, partition, value in records:
            await producer.send(settings.topic(topic), value, key=b"k", partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


async def _committed(settings: Settings, group: str) -> dict[tuple[str, int], int]:
    """(topic key, partition) -> committed offset of the sink's group on the registry-framed topics."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except (GroupCoordinatorNotAvailableError, CoordinatorNotAvailableError, NotCoordinatorError):
        return {}  # the group's coordinator is not up yet: nothing known committed
    finally:
        await admin.close()
    by_name = {settings.topic(k): k for k in KINDS}
    return {(by_name[tp.topic], tp.partition): meta.offset for tp, meta in offsets.items()
            if tp.topic in by_name and meta.offset >= 0}


async def _wait_for(what: str, check: Any, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        await asyncio.sleep(0.5)


def _encode(topic: str, rec: dict[str, Any], schema_id: int | None) -> bytes:
    schema = KINDS[topic][0]
    if schema_id is None:
        return encode_single_object(rec, schema)
    return encode_confluent(rec, schema_id, get_catalogue().latest(schema).parsed)


def _assert_landed_once(settings: Settings, sink: ClickHouseSink, want: dict[str, set[str]]) -> None:
    url = settings.resolved_clickhouse_url
    try:
        client = connect(url)
        for topic, ids in want.items():
            _schema, table, column = KINDS[topic]
            got = [r[0] for r in client.query(f"SELECT {column} FROM {table}").result_rows]
            assert sorted(got) == sorted(ids), f"{table}: every record exactly once"
            # Rows sent to ClickHouse, not just rows kept: nothing was inserted twice and merged away.
            assert sink.stats.rows.get(table, 0) == len(ids), table
    finally:
        close(url)


def test_confluent_framed_inputs_land_when_the_registry_is_up(
        topic_settings: Settings, tmp_path: Path, registry: FakeRegistry) -> None:
    settings = _settings(topic_settings, tmp_path, registry)
    ids = {t: registry.register(get_catalogue().latest(KINDS[t][0]).schema_json) for t in KINDS}
    records: list[tuple[str, int, bytes]] = []
    want: dict[str, set[str]] = {t: set() for t in KINDS}
    for topic in KINDS:
        for partition in range(3):
            for i in range(12):
                rec = _record(topic, i, partition)
                # Mostly Confluent-framed, some single-object: both encodings on one partition.
                records.append((topic, partition, _encode(topic, rec, None if i % 4 == 0 else ids[topic])))
                want[topic].add(rec[KINDS[topic][2]])
    bogus = b"\x00" + (900_001).to_bytes(4, "big") + b"junk"
    records.append((SUBSCRIPTION_CHANGES, 1, bogus))

    async def scenario() -> ClickHouseSink:
        await _produce(settings, records)
        sink = ClickHouseSink(settings, settings.kafka_bootstrap_servers or "", topic_names(settings))
        await sink.start()
        try:
            ends = {(t, p): 12 + (t == SUBSCRIPTION_CHANGES and p == 1) for t in KINDS for p in range(3)}

            async def drained() -> bool:
                return await _committed(settings, sink.group) == ends

            await _wait_for("registry-framed inputs committed", drained)
            dead = await sink.query("SELECT source_topic, source_partition, source_offset, error_kind "
                                    "FROM dead_letters FINAL")
            assert dead == [(settings.topic(SUBSCRIPTION_CHANGES), 1, 12, "UNKNOWN_SCHEMA")]
        finally:
            await sink.stop()
        return sink

    sink = asyncio.run(scenario())
    assert sink.stats.undecodable == 1
    assert registry.gets.count(900_001) == 1
    _assert_landed_once(settings, sink, want)


def test_registry_down_at_first_holds_what_needs_it_then_lands_everything_once(
        topic_settings: Settings, tmp_path: Path, registry: FakeRegistry) -> None:
    settings = _settings(topic_settings, tmp_path, registry)
    ids = {t: registry.register(get_catalogue().latest(KINDS[t][0]).schema_json) for t in KINDS}
    registry.down()  # and this sink never fetched an id: nothing on disk either
    # Held: grants partitions 0 and 2, changes partition 0, reviews partition 1, each from its cut on.
    cuts = {(CREDIT_GRANTS, 0): 5, (CREDIT_GRANTS, 2): 0, (SUBSCRIPTION_CHANGES, 0): 8, (GAMING_REVIEWS, 1): 3}
    per_partition = 15
    records: list[tuple[str, int, bytes]] = []
    want: dict[str, set[str]] = {t: set() for t in KINDS}
    for topic in KINDS:
        for partition in range(3):
            cut = cuts.get((topic, partition))
            for i in range(per_partition):
                rec = _record(topic, i, partition)
                # Before the cut single-object only; from it on Confluent-framed mixed with single-object.
                framed = cut is not None and i >= cut and (i == cut or i % 3 != 0)
                records.append((topic, partition, _encode(topic, rec, ids[topic] if framed else None)))
                want[topic].add(rec[KINDS[topic][2]])

    async def scenario() -> ClickHouseSink:
        await _produce(settings, records)
        sink = ClickHouseSink(settings, settings.kafka_bootstrap_servers or "", topic_names(settings))
        await sink.start()
        try:
            expect_down = {(t, p): cuts.get((t, p), per_partition) for t in KINDS for p in range(3)}
            # A partition cut at its first record commits nothing at all.
            expect_down = {tp: o for tp, o in expect_down.items() if o > 0}

            async def settled() -> bool:
                return await _committed(settings, sink.group) == expect_down

            await _wait_for("partitions without registry records drained, held ones at their cut", settled)
            await asyncio.sleep(4)  # several backoff rounds: still waiting, nothing given up on
            assert await _committed(settings, sink.group) == expect_down, "no commit passes a held record"
            assert sink.gate is not None
            assert {(t, tp.partition) for tp in sink.gate.held for t in KINDS
                    if tp.topic == settings.topic(t)} == set(cuts)
            assert await sink.query("SELECT count() FROM dead_letters") == [(0,)]
            assert sink.stats.undecodable == 0, "a registry outage must not make records undecodable"
            before = {t: (await sink.query(f"SELECT count() FROM {KINDS[t][1]}"))[0][0] for t in KINDS}
            assert before == {t: sum(expect_down.get((t, p), 0) for p in range(3)) for t in KINDS}

            registry.up()
            ends = {(t, p): per_partition for t in KINDS for p in range(3)}

            async def drained() -> bool:
                return await _committed(settings, sink.group) == ends

            await _wait_for("held partitions resumed and committed", drained)
            assert sink.gate.held == {}
            assert await sink.query("SELECT count() FROM dead_letters") == [(0,)]
        finally:
            await sink.stop()
        return sink

    sink = asyncio.run(scenario())
    assert sink.stats.undecodable == 0
    _assert_landed_once(settings, sink, want)
