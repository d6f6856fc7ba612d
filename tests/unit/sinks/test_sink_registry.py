"""The sink's registry intake without a broker or ClickHouse: which topics pass the schema gate,
where a held partition's buffer and commits stop, that nothing waiting is dead-lettered, and that
the partition resumes and is stored once the registry answers. The registry is the HTTP fake the
processor's tests use; the consumer is a recording stand-in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from schemas.catalogue import get_catalogue
from sinks.dead_letter_out import undecodable
from sinks.routing import ROUTES
from sinks.service import ClickHouseSink
from streams.runtime.topics import CREDIT_GRANTS, GAMING_REVIEWS, SUBSCRIPTION_CHANGES, topic_names
from streams.settings import Settings
from streams.wire.codec import RegistryUnavailable, encode_confluent, encode_single_object
from tests.fake_registry import FakeRegistry

GRANT = {"event_type": "ISSUED", "grant_id": "g", "account_id": "acct-1", "campaign": "launch",
         "amount_micro": 5_000_000, "granted_at": 1_793_000_000_000, "expires_at": 1_795_000_000_000,
         "priority": 0, "occurred_at": 1_793_000_000_000, "reason": None}
CHANGE = {"change_id": "c", "account_id": "acct-1", "change": "UPGRADE", "from_plan": "FREE", "to_plan": "PRO",
          "occurred_at": 1_793_000_000_000}


@dataclass(frozen=True)
class _Rec:
    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = b"acct-1"
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int = 0


class _Consumer:
    """What the gate calls on an aiokafka consumer, recorded."""

    def __init__(self, tps: set[TopicPartition]) -> None:
        self.assigned = set(tps)
        self.paused: set[TopicPartition] = set()
        self.sought: dict[TopicPartition, int] = {}

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.sought[tp] = offset

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    fake = FakeRegistry()
    yield fake
    fake.close()


def _settings(tmp_path: Path, registry_url: str | None) -> Settings:
    return Settings(kafka_bootstrap_servers="127.0.0.1:1", topic_prefix="t.", data_dir=tmp_path / "data",
                    schema_registry_url=registry_url, registry_wait_seconds=0.2,
                    registry_backoff_max_seconds=0.2, registry_timeout_seconds=2.0)


def _sink(settings: Settings) -> ClickHouseSink:
    sink = ClickHouseSink(settings, "127.0.0.1:1", topic_names(settings))
    sink.make_decoders()
    return sink


def _grant(i: int, schema_id: int | None) -> bytes:
    grant = {**GRANT, "grant_id": f"g-{i}"}
    if schema_id is None:
        return encode_single_object(grant, "CreditGrant")
    return encode_confluent(grant, schema_id, get_catalogue().latest("CreditGrant").parsed)


def test_the_topics_platform_services_write_are_the_registry_framed_ones() -> None:
    assert {r.topic_key for r in ROUTES if r.registry_framed} == {CREDIT_GRANTS, SUBSCRIPTION_CHANGES,
                                                                     GAMING_REVIEWS}


def test_without_a_registry_there_is_no_gate_and_confluent_records_are_unknown_schema(tmp_path: Path) -> None:
    sink = _sink(_settings(tmp_path, None))
    assert sink.gate is None and sink.schemas is None
    topic = sink.settings.topic(SUBSCRIPTION_CHANGES)
    junk = [_Rec(topic, 0, 0, b"\x00\x00\x00\x00\x07junk")]
    assert [d["error_kind"] for d in undecodable(junk, sink.decoders[topic])] == ["UNKNOWN_SCHEMA"]
    # Its dead letter goes to the dead-letters topic (sinks/dead_letter_out.py), not into a store.
    rows, _ = sink._rows(topic, junk, -1)
    assert rows == {"subscription_changes": []}


def test_a_held_partition_is_neither_buffered_nor_committed_past_its_cut_and_lands_once_back(
        registry: FakeRegistry, tmp_path: Path) -> None:
    grant_id = registry.register(get_catalogue().latest("CreditGrant").schema_json)
    registry.down()
    sink = _sink(_settings(tmp_path, registry.url))
    assert sink.gate is not None and sink.schemas is not None
    grants, changes = sink.settings.topic(CREDIT_GRANTS), sink.settings.topic(SUBSCRIPTION_CHANGES)
    assert sink.gate.topics == {grants, changes, sink.settings.topic(GAMING_REVIEWS)}
    g0, c0 = TopicPartition(grants, 0), TopicPartition(changes, 0)
    consumer = _Consumer({g0, c0})
    planner = sink.planner
    planner.assign([(grants, 0), (changes, 0)])
    planner.arm((grants, 0), 0, None, [])
    planner.arm((changes, 0), 0, None, [])
    # Offsets 0-1 single-object, 2 needs the registry, 3 single-object behind it, 4 the registry again.
    fetched_grants = [_Rec(grants, 0, o, _grant(o, None if o in (0, 1, 3) else grant_id)) for o in range(5)]
    fetched_changes = [_Rec(changes, 0, o, encode_single_object({**CHANGE, "change_id": f"c-{o}"},
                                                                   "SubscriptionChange")) for o in range(3)]

    async def scenario() -> None:
        try:
            admitted = await sink.gate.admit(consumer, {g0: fetched_grants, c0: fetched_changes})  # type: ignore[union-attr]
            # The registry is down: the grants partition waits at offset 2; the other topic's
            # partition 0 (not co-partitioned with it) goes on whole.
            assert [r.offset for r in admitted[g0]] == [0, 1]
            assert admitted[c0] == fetched_changes
            assert consumer.sought == {g0: 2} and consumer.paused == {g0}
            assert sink.gate.held == {g0: {grant_id}}  # type: ignore[union-attr]
            for tp, records in admitted.items():
                assert planner.add((tp.topic, tp.partition), records, now=0.0)
            store = planner.next_store(now=0.0, force=True)
            assert store is not None
            assert store.commits() == {(grants, 0): 2, (changes, 0): 3}, "no commit passes the cut"
            stored_grants = next(p for p in store.pieces if p.tp == (grants, 0))
            rows, _ = sink._rows(grants, stored_grants.records, -1)
            assert [r["grant_id"] for r in rows["credit_grants"]] == ["g-0", "g-1"]
            planner.stored(store, {p.tp: p.guard_before for p in store.pieces})
            assert sink.stats.undecodable == 0

            # Still down: resuming keeps asking, and the partition stays paused.
            assert sink.gate.resume_ready(consumer) == []  # type: ignore[union-attr]
            assert consumer.paused == {g0}
            # Revoking another topic's partition 0 does not release the held grants partition.
            sink.gate.release([c0])  # type: ignore[union-attr]
            assert g0 in sink.gate.held  # type: ignore[union-attr]

            registry.up()
            deadline = time.monotonic() + 20
            while consumer.paused and time.monotonic() < deadline:
                sink.gate.resume_ready(consumer)  # type: ignore[union-attr]
                await asyncio.sleep(0.1)
            assert consumer.paused == set() and sink.gate.held == {}  # type: ignore[union-attr]

            # Fetched again from the cut: everything goes, in order, after what was stored.
            again = await sink.gate.admit(consumer, {g0: fetched_grants[2:]})  # type: ignore[union-attr]
            assert again == {g0: fetched_grants[2:]}
            assert planner.add((grants, 0), again[g0], now=1.0)
            store = planner.next_store(now=1.0, force=True)
            assert store is not None and store.commits() == {(grants, 0): 5}
            rows, _ = sink._rows(grants, store.pieces[0].records, -1)
            assert [r["grant_id"] for r in rows["credit_grants"]] == ["g-2", "g-3", "g-4"]
            assert not rows.get("dead_letters") and sink.stats.undecodable == 0
        finally:
            await sink.schemas.close()  # type: ignore[union-attr]

    asyncio.run(scenario())


def test_a_fetch_made_stale_by_a_rebalance_during_the_wait_is_neither_cut_nor_used(
        registry: FakeRegistry, tmp_path: Path) -> None:
    grant_id = registry.register(get_catalogue().latest("CreditGrant").schema_json)
    registry.down()
    sink = _sink(_settings(tmp_path, registry.url))
    grants = sink.settings.topic(CREDIT_GRANTS)
    g0 = TopicPartition(grants, 0)
    consumer = _Consumer({g0})
    fetched = [_Rec(grants, 0, o, _grant(o, None if o == 10 else grant_id)) for o in range(10, 13)]

    async def scenario() -> None:
        try:
            # Re-assigned while the gate waited: the consumer's position went back to the committed
            # offset, so seeking to this fetch's cut would skip records below it.
            admitted = await sink.gate.admit(consumer, {g0: fetched}, current=lambda: False)  # type: ignore[union-attr]
            assert admitted == {}
            assert consumer.sought == {} and consumer.paused == set() and sink.gate.held == {}  # type: ignore[union-attr]
            # The same fetch, still current: cut and held.
            admitted = await sink.gate.admit(consumer, {g0: fetched}, current=lambda: True)  # type: ignore[union-attr]
            assert [r.offset for r in admitted[g0]] == [10] and consumer.sought == {g0: 11}
        finally:
            await sink.schemas.close()  # type: ignore[union-attr]

    asyncio.run(scenario())


def test_only_a_definitive_not_found_makes_an_undecodable_record(registry: FakeRegistry, tmp_path: Path) -> None:
    change_id = registry.register(get_catalogue().latest("SubscriptionChange").schema_json)
    sink = _sink(_settings(tmp_path, registry.url))
    assert sink.schemas is not None
    changes, grants = sink.settings.topic(SUBSCRIPTION_CHANGES), sink.settings.topic(CREDIT_GRANTS)
    parsed = get_catalogue().latest("SubscriptionChange").parsed
    good = encode_confluent(CHANGE, change_id, parsed)
    bogus = b"\x00" + (987_654).to_bytes(4, "big") + b"junk"
    pending = b"\x00" + (555_555).to_bytes(4, "big") + b"junk"

    async def scenario() -> None:
        try:
            assert await sink.schemas.resolve({change_id, 987_654}, timeout=10) == set()  # type: ignore[union-attr]
        finally:
            await sink.schemas.close()  # type: ignore[union-attr]

    asyncio.run(scenario())
    fetched = [_Rec(changes, 0, 0, good), _Rec(changes, 0, 1, bogus)]
    rows, _ = sink._rows(changes, fetched, -1)
    assert rows == {"subscription_changes": rows["subscription_changes"]}
    assert [r["change_id"] for r in rows["subscription_changes"]] == ["c"]
    assert [(d["source_offset"], d["error_kind"]) for d in undecodable(fetched, sink.decoders[changes])] == [
        (1, "UNKNOWN_SCHEMA")]
    # credit-grants: the processor dead-letters what it cannot read; the sink only skips it.
    rows, _ = sink._rows(grants, [_Rec(grants, 0, 0, bogus)], -1)
    assert rows == {"credit_grants": []} and sink.stats.undecodable == 2
    # An id nobody decided cannot reach decoding past the gate; if it did, it must not be dropped.
    with pytest.raises(RegistryUnavailable):
        sink._rows(changes, [_Rec(changes, 0, 2, pending)], -1)
    assert sink.stats.undecodable == 2


def test_stopping_the_sink_closes_the_registry_client(registry: FakeRegistry, tmp_path: Path) -> None:
    sink = _sink(_settings(tmp_path, registry.url))
    sid = registry.register(get_catalogue().latest("CreditGrant").schema_json)

    async def scenario() -> Any:
        assert await sink.schemas.resolve({sid}, timeout=10) == set()  # type: ignore[union-attr]
        session = sink.schemas._session  # type: ignore[union-attr]
        assert session is not None and not session.closed
        await sink.on_stop()  # no consumer started: only the registry client and the executor
        return session

    session = asyncio.run(scenario())
    assert session.closed and sink.schemas._pump is None  # type: ignore[union-attr]
