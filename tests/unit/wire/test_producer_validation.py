"""The producer's contract without a broker: validate first, key by account, encode, report failures."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from schemas.catalogue import latest
from streams.producer import CreditflowProducer, DeliveryError, InvalidEventError, SyncCreditflowProducer
from streams.settings import Settings
from streams.wire.codec import Decoder
from tests.fake_registry import FakeRegistry
from tests.unit.wire.test_codec import NOW_MS, sample_event


class FakeKafkaProducer:
    """Stands in for AIOKafkaProducer: records sends, optionally fails deliveries."""

    instances: list[FakeKafkaProducer] = []

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.fail_delivery = False
        self.started = self.stopped = False
        FakeKafkaProducer.instances.append(self)

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def flush(self) -> None:
        await asyncio.sleep(0)

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        self.sent.append((topic, key, value))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail_delivery:
            fut.set_exception(KafkaTimeoutError("no ack"))
        else:
            fut.set_result(("meta", topic))
        return fut


def run_async(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """No asyncio pytest plugin is installed; each async test gets its own event loop."""

    @functools.wraps(fn)
    def wrapper() -> None:
        asyncio.run(fn())

    return wrapper


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    FakeKafkaProducer.instances.clear()
    yield


def settings(**kw: Any) -> Settings:
    return Settings(kafka_bootstrap_servers="127.0.0.1:9", topic_prefix="t1.", **kw)


def make(**kw: Any) -> CreditflowProducer:
    return CreditflowProducer(
        kw.pop("settings", None) or settings(),
        kafka_producer_factory=FakeKafkaProducer,
        clock=lambda: NOW_MS,
        **kw,
    )


def grant() -> dict[str, Any]:
    return {
        "event_type": "ISSUED",
        "grant_id": "g1",
        "account_id": "acct-42",
        "campaign": "launch",
        "amount_micro": 25_000_000,
        "granted_at": NOW_MS,
        "expires_at": NOW_MS + 86_400_000,
        "priority": 0,
        "occurred_at": NOW_MS,
        "reason": None,
    }


def change() -> dict[str, Any]:
    return {
        "change_id": "c1",
        "account_id": "acct-42",
        "change": "START",
        "from_plan": None,
        "to_plan": "PRO",
        "occurred_at": NOW_MS,
    }


@run_async
async def test_invalid_events_are_rejected_before_anything_is_sent() -> None:
    async with make() as p:
        fake = FakeKafkaProducer.instances[0]
        with pytest.raises(InvalidEventError) as info:
            await p.emit_interaction(sample_event(input_tokens=-5))
        assert "input_tokens" in info.value.reason
        with pytest.raises(InvalidEventError, match="occurred_at"):
            await p.emit_interaction(sample_event(occurred_at=NOW_MS + 3_600_000))
        with pytest.raises(InvalidEventError, match="amount_micro"):
            await p.emit_grant({**grant(), "amount_micro": -1})
        with pytest.raises(InvalidEventError, match="to_plan"):
            await p.emit_subscription_change({**change(), "to_plan": None})
        assert fake.sent == []


@run_async
async def test_validation_does_not_need_a_started_producer() -> None:
    p = make()
    with pytest.raises(InvalidEventError, match="event_id"):
        await p.emit_interaction(sample_event(event_id=""))
    with pytest.raises(RuntimeError, match="not started"):
        await p.emit_interaction(sample_event())


@run_async
async def test_valid_records_are_keyed_by_account_and_single_object_encoded() -> None:
    async with make() as p:
        await p.emit_interaction(sample_event())
        await p.emit_grant(grant())
        await p.emit_subscription_change(change())
        await p.flush()
        fake = FakeKafkaProducer.instances[0]
    assert fake.config["acks"] == "all" and fake.config["enable_idempotence"] is True
    assert fake.config["compression_type"] == "zstd"
    assert fake.stopped
    topics = [t for t, _, _ in fake.sent]
    assert topics == ["t1.interaction-events", "t1.credit-grants", "t1.subscription-changes"]
    assert {k for _, k, _ in fake.sent} == {b"acct-42"}
    assert all(v[:2] == b"\xc3\x01" for _, _, v in fake.sent)
    assert Decoder("InteractionEvent").decode(fake.sent[0][2]) == sample_event()
    assert Decoder("CreditGrant").decode(fake.sent[1][2]) == grant()
    assert Decoder("SubscriptionChange").decode(fake.sent[2][2]) == change()


@run_async
async def test_defaults_are_filled_for_omitted_optional_fields() -> None:
    ev = sample_event()
    for name in ("org_id", "cached_tokens", "attributes", "context_uniqueness", "payment_hash"):
        del ev[name]
    async with make() as p:
        await p.emit_interaction(ev)
        sent = FakeKafkaProducer.instances[0].sent
    decoded = Decoder("InteractionEvent").decode(sent[0][2])
    assert decoded["cached_tokens"] == 0 and decoded["attributes"] == {} and decoded["org_id"] is None


@run_async
async def test_delivery_failure_raises_delivery_error_on_flush_and_on_wait() -> None:
    p = make()
    await p.start()
    FakeKafkaProducer.instances[0].fail_delivery = True
    await p.emit_interaction(sample_event())
    with pytest.raises(DeliveryError) as info:
        await p.flush()
    assert len(info.value.errors) == 1
    await p.flush()  # failures are reported once
    with pytest.raises(DeliveryError):
        await p.emit_interaction(sample_event(), wait=True)
    with pytest.raises(DeliveryError):
        await p.close()


@run_async
async def test_confluent_format_when_a_registry_is_configured() -> None:
    registry = FakeRegistry()
    try:
        async with make(settings=settings(schema_registry_url=registry.url)) as p:
            await p.emit_interaction(sample_event())
            await p.emit_interaction(sample_event(event_id="evt-2"))
            sent = FakeKafkaProducer.instances[0].sent
        posts = [r for r in registry.requests if r[0] == "POST"]
        assert posts == [("POST", "/subjects/t1.interaction-events-value/versions")]  # registered once
        value = sent[0][2]
        assert value[0] == 0
        schema_id = int.from_bytes(value[1:5], "big")
        assert registry.schemas[schema_id]
        from streams.wire.codec import SchemaRegistryClient

        decoder = Decoder("InteractionEvent", SchemaRegistryClient(registry.url))
        assert decoder.decode(value) == sample_event()
        assert decoder.decode(sent[1][2])["event_id"] == "evt-2"
    finally:
        registry.close()


def test_missing_bootstrap_is_a_clear_error() -> None:
    p = CreditflowProducer(Settings(), kafka_producer_factory=FakeKafkaProducer, bootstrap_servers=None)
    p._bootstrap = None
    with pytest.raises(ValueError, match="bootstrap"):
        asyncio.run(p.start())


def test_sync_producer_validates_and_sends_from_a_background_loop() -> None:
    with SyncCreditflowProducer(
        settings(), kafka_producer_factory=FakeKafkaProducer, clock=lambda: NOW_MS
    ) as p:
        with pytest.raises(InvalidEventError, match="latency_ms"):
            p.emit_interaction(sample_event(latency_ms=-1))
        p.emit_interaction(sample_event())
        p.emit_grant(grant())
        p.flush()
    fake = FakeKafkaProducer.instances[0]
    assert [t for t, _, _ in fake.sent] == ["t1.interaction-events", "t1.credit-grants"]
    assert fake.stopped
    assert latest("InteractionEvent").fingerprint == fake.sent[0][2][2:10]


@run_async
async def test_registry_down_on_first_send_is_a_delivery_error() -> None:
    registry = FakeRegistry()
    registry.fail_with = 503
    try:
        from streams.wire.codec import SchemaRegistryClient

        client = SchemaRegistryClient(registry.url, retries=1, sleep=lambda s: None)
        async with make(registry=client) as p:
            with pytest.raises(DeliveryError, match="register"):
                await p.emit_interaction(sample_event())
            assert FakeKafkaProducer.instances[0].sent == []
    finally:
        registry.close()
