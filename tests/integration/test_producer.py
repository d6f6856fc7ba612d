"""The producer API against the real broker: what is emitted can be consumed back and decoded."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from streams.producer import CreditflowProducer, InvalidEventError, SyncCreditflowProducer
from streams.runtime.topics import CREDIT_GRANTS, INTERACTION_EVENTS, SUBSCRIPTION_CHANGES, ensure_topics
from streams.settings import Settings
from streams.wire.codec import Decoder
from tests.unit.wire.test_codec import sample_event

pytestmark = pytest.mark.integration

N = 300


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _consume(bootstrap: str, topic: str, expected: int, timeout: float = 30) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < expected:
            assert time.monotonic() < deadline, f"only {len(records)}/{expected} records arrived"
            batches = await consumer.getmany(timeout_ms=200)
            records += [r for batch in batches.values() for r in batch]
    finally:
        await consumer.stop()
    return records


def test_emitted_events_are_consumed_back_and_decoded(topic_settings: Settings) -> None:
    bootstrap = topic_settings.kafka_bootstrap_servers
    assert bootstrap
    now = _now_ms()
    events = [
        sample_event(event_id=f"evt-{i}", account_id=f"acct-{i % 17}", occurred_at=now - i) for i in range(N)
    ]
    grant = {
        "event_type": "ISSUED",
        "grant_id": "g1",
        "account_id": "acct-1",
        "campaign": "launch",
        "amount_micro": 25_000_000,
        "granted_at": now,
        "expires_at": now + 86_400_000,
        "priority": 0,
        "occurred_at": now,
        "reason": None,
    }
    change = {
        "change_id": "c1",
        "account_id": "acct-1",
        "change": "START",
        "from_plan": None,
        "to_plan": "PRO",
        "occurred_at": now,
    }

    async def scenario() -> None:
        await ensure_topics(bootstrap, topic_settings)
        async with CreditflowProducer(topic_settings) as p:
            for ev in events:
                await p.emit_interaction(ev)
            rejected = 0
            for bad in (
                sample_event(input_tokens=-1),
                sample_event(account_id=""),
                sample_event(occurred_at=now + 3_600_000),
            ):
                with pytest.raises(InvalidEventError):
                    await p.emit_interaction(bad)
                rejected += 1
            assert rejected == 3
            await p.emit_grant(grant, wait=True)
            await p.emit_subscription_change(change)
            await p.flush()

        records = await _consume(bootstrap, topic_settings.topic(INTERACTION_EVENTS), N)
        decoder = Decoder("InteractionEvent")
        decoded = {decoder.decode(r.value)["event_id"]: r for r in records}
        assert set(decoded) == {ev["event_id"] for ev in events}  # all N, no invalid ones
        by_id = {ev["event_id"]: ev for ev in events}
        partitions_of_account: dict[str, set[int]] = {}
        for event_id, rec in decoded.items():
            assert decoder.decode(rec.value) == by_id[event_id]
            assert rec.key == by_id[event_id]["account_id"].encode()
            partitions_of_account.setdefault(by_id[event_id]["account_id"], set()).add(rec.partition)
        # Keyed by account: each account's events sit in exactly one partition.
        assert all(len(ps) == 1 for ps in partitions_of_account.values())

        (g,) = await _consume(bootstrap, topic_settings.topic(CREDIT_GRANTS), 1)
        assert Decoder("CreditGrant").decode(g.value) == grant
        (c,) = await _consume(bootstrap, topic_settings.topic(SUBSCRIPTION_CHANGES), 1)
        assert Decoder("SubscriptionChange").decode(c.value) == change

    asyncio.run(scenario())


def test_sync_producer_against_the_broker(topic_settings: Settings) -> None:
    bootstrap = topic_settings.kafka_bootstrap_servers
    assert bootstrap
    asyncio.run(ensure_topics(bootstrap, topic_settings))
    now = _now_ms()
    with SyncCreditflowProducer(topic_settings) as p:
        for i in range(20):
            p.emit_interaction(sample_event(event_id=f"s-{i}", occurred_at=now))
        p.emit_interaction(sample_event(event_id="s-last", occurred_at=now), wait=True)
    records = asyncio.run(_consume(bootstrap, topic_settings.topic(INTERACTION_EVENTS), 21))
    ids = {Decoder("InteractionEvent").decode(r.value)["event_id"] for r in records}
    assert ids == {f"s-{i}" for i in range(20)} | {"s-last"}
