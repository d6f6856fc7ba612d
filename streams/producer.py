"""The producer API for platform services: validate, encode, key by account, send durably.

Usage (async)::

    async with CreditflowProducer(settings) as p:
        await p.emit_interaction(event)      # raises InvalidEventError before anything is sent
        await p.flush()                      # raises DeliveryError if any send failed

Usage (blocking callers)::

    with SyncCreditflowProducer(settings) as p:
        p.emit_interaction(event)

``emit_*`` only enqueues (aiokafka batches in the background) and returns the delivery future;
``flush()`` is the point where the caller learns that everything so far is durably on the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Future as ConcurrentFuture
from types import TracebackType
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas.catalogue import SchemaVersion, get_catalogue
from streams.runtime.kafka_clients import KafkaClients, describe_failure
from streams.runtime.kafka_log_limits import limit_kafka_logs, quiet_while_connecting
from streams.runtime.topics import CREDIT_GRANTS, INTERACTION_EVENTS, SUBSCRIPTION_CHANGES
from streams.settings import Settings, get_settings
from streams.wire.codec import (
    RegistryUnavailable,
    SchemaRegistryClient,
    SchemaRegistryError,
    encode_confluent,
    encode_single_object_with,
)
from streams.wire.validation import validate_event, validate_grant, validate_subscription_change

T = TypeVar("T")


class InvalidEventError(ValueError):
    """The record was rejected before sending; ``reason`` names the offending field."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"invalid {kind}: {reason}")
        self.reason = reason


class DeliveryError(Exception):
    """The broker did not acknowledge one or more records."""

    def __init__(self, message: str, errors: list[BaseException] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


# aiokafka compresses lz4 at level 9 (~35 MB/s on event batches here); zstd at its level 3 is ~10x
# faster and compresses better. Both come with aiokafka (cramjam).
DEFAULT_COMPRESSION = "zstd"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class CreditflowProducer:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        bootstrap_servers: str | None = None,
        linger_ms: int = 10,
        max_batch_size: int = 256 * 1024,
        compression_type: str | None = None,
        registry: SchemaRegistryClient | None = None,
        clock: Callable[[], int] = _now_ms,
        client_id: str = "creditflow-producer",
        kafka_producer_factory: Callable[..., Any] = AIOKafkaProducer,
    ) -> None:
        self.settings = settings or get_settings()
        self._bootstrap = bootstrap_servers or self.settings.kafka_bootstrap_servers
        self._delivery_timeout = self.settings.kafka_delivery_timeout_ms / 1000
        self._linger_ms = linger_ms
        self._max_batch_size = max_batch_size
        self.compression_type = compression_type or DEFAULT_COMPRESSION
        self._client_id = client_id
        # Injectable so the validation/encoding/keying contract is testable without a broker.
        self._factory = kafka_producer_factory
        self._clock = clock
        if registry is None and self.settings.schema_registry_url:
            registry = SchemaRegistryClient(self.settings.schema_registry_url)
        self._registry = registry
        catalogue = get_catalogue()
        self._schemas: dict[str, SchemaVersion] = {
            name: catalogue.latest(name) for name in ("InteractionEvent", "CreditGrant", "SubscriptionChange")
        }
        self._schema_ids: dict[str, int] = {}  # topic -> registry id (Confluent format only)
        self._producer: Any = None
        self._pending: set[asyncio.Future[Any]] = set()
        self._failures: list[BaseException] = []
        # Started once: after a delivery timeout the next emit reconnects with a fresh client.
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._producer is not None:
            return
        if not self._bootstrap:
            raise ValueError(
                "no Kafka bootstrap servers: pass bootstrap_servers or set KAFKA_BOOTSTRAP_SERVERS"
            )
        clients = KafkaClients(self.settings, self._bootstrap)
        limit_kafka_logs(self.settings.kafka_log_interval_seconds)
        producer = self._factory(
            **clients.common(),
            client_id=self._client_id,
            # aiokafka fails a batch not acknowledged within this long; flush() bounds the rest.
            request_timeout_ms=min(40_000, self.settings.kafka_delivery_timeout_ms),
            acks="all",
            enable_idempotence=True,
            compression_type=self.compression_type,
            linger_ms=self._linger_ms,
            max_batch_size=self._max_batch_size,
        )
        try:
            with quiet_while_connecting():
                async with asyncio.timeout(self._delivery_timeout):
                    await producer.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            with contextlib.suppress(Exception):
                await _abandon(producer)
            reason = await describe_failure(exc, clients, from_kafka=True)
            raise DeliveryError(reason, [exc]) from None
        self._producer = producer
        self._started = True

    async def flush(self) -> None:
        """Wait until every record emitted so far is acknowledged; DeliveryError if any was not, or
        if some are still unacknowledged after ``KAFKA_DELIVERY_TIMEOUT_MS`` (broker unreachable).

        Records that timed out are dropped with the client that held them (aiokafka never expires
        an idempotent batch, it would resend it whenever the broker came back); the next emit
        connects afresh. One in flight when the broker went away may still have landed, so a resend
        may be a duplicate: the event id is the idempotency key."""
        try:
            async with asyncio.timeout(self._delivery_timeout):
                if self._producer is not None:
                    await self._producer.flush()
                if self._pending:
                    await asyncio.gather(*list(self._pending), return_exceptions=True)
        except TimeoutError:
            waiting = len(self._pending)
            await self._discard()
            raise DeliveryError(
                f"{waiting} record(s) not acknowledged by Kafka at {self._bootstrap} within "
                f"{self._delivery_timeout:g}s (KAFKA_DELIVERY_TIMEOUT_MS)"
            ) from None
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryError(f"{len(failures)} record(s) not delivered: {failures[0]}", failures)

    async def close(self) -> None:
        self._started = False
        if self._producer is None:
            return
        try:
            await self.flush()
        finally:
            producer, self._producer = self._producer, None
            if producer is not None:
                await producer.stop()

    async def _discard(self) -> None:
        """Drop the client and every record it still holds."""
        producer, self._producer = self._producer, None
        pending, self._pending = self._pending, set()
        self._failures = []
        for fut in pending:
            fut.remove_done_callback(self._on_delivery)
        if producer is not None:
            with contextlib.suppress(Exception):
                await _abandon(producer)

    async def __aenter__(self) -> CreditflowProducer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- emitting -------------------------------------------------------------------------------

    async def emit_interaction(self, ev: Mapping[str, Any], *, wait: bool = False) -> asyncio.Future[Any]:
        reason = validate_event(ev, self._clock())
        if reason:
            raise InvalidEventError("interaction event", reason)
        return await self._emit(INTERACTION_EVENTS, "InteractionEvent", ev, wait)

    async def emit_grant(self, g: Mapping[str, Any], *, wait: bool = False) -> asyncio.Future[Any]:
        reason = validate_grant(g, self._clock())
        if reason:
            raise InvalidEventError("credit grant", reason)
        return await self._emit(CREDIT_GRANTS, "CreditGrant", g, wait)

    async def emit_subscription_change(
        self, c: Mapping[str, Any], *, wait: bool = False
    ) -> asyncio.Future[Any]:
        reason = validate_subscription_change(c, self._clock())
        if reason:
            raise InvalidEventError("subscription change", reason)
        return await self._emit(SUBSCRIPTION_CHANGES, "SubscriptionChange", c, wait)

    async def encode(self, topic_name: str, schema_name: str, record: Mapping[str, Any]) -> bytes:
        """Wire bytes for a record: Confluent format when a registry is configured, else single-object."""
        sv = self._schemas[schema_name]
        try:
            if self._registry is None:
                return encode_single_object_with(record, sv)
            topic = self.settings.topic(topic_name)
            schema_id = self._schema_ids.get(topic)
            if schema_id is None:
                # TopicNameStrategy, the Confluent default, so Confluent consumers find it too.
                try:
                    schema_id = await asyncio.to_thread(
                        self._registry.register, f"{topic}-value", sv.schema_json
                    )
                except (RegistryUnavailable, SchemaRegistryError) as exc:
                    # Nothing was sent; the caller may retry once the registry is back or fixed.
                    raise DeliveryError(f"cannot register {schema_name} for {topic}: {exc}", [exc]) from exc
                self._schema_ids[topic] = schema_id
            return encode_confluent(record, schema_id, sv.parsed)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            # fastavro's complaint about a record that does not fit the schema.
            raise InvalidEventError(schema_name, f"does not match schema: {exc}") from exc

    async def _emit(
        self, topic_name: str, schema_name: str, record: Mapping[str, Any], wait: bool
    ) -> asyncio.Future[Any]:
        value = await self.encode(topic_name, schema_name, record)
        if self._producer is None and self._started:
            await self.start()  # the client was dropped after a delivery timeout
        if self._producer is None:
            raise RuntimeError("producer is not started: use 'async with' or await start()")
        key = str(record["account_id"]).encode()
        try:
            # send() waits for metadata and buffer space; with the broker away that is unbounded.
            # (asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation of the
            # caller when the send completes at the same moment, and a Ctrl-C would then be lost.)
            async with asyncio.timeout(self._delivery_timeout):
                fut = await self._producer.send(self.settings.topic(topic_name), value=value, key=key)
        except (KafkaError, TimeoutError) as exc:
            raise DeliveryError(f"cannot enqueue to {self.settings.topic(topic_name)} at {self._bootstrap}: "
                                f"{exc or 'no broker answered within KAFKA_DELIVERY_TIMEOUT_MS'}", [exc]) from exc
        self._pending.add(fut)
        fut.add_done_callback(self._on_delivery)
        if wait:
            try:
                async with asyncio.timeout(self._delivery_timeout):
                    await asyncio.shield(fut)
            except TimeoutError:
                await self._discard()  # as flush() does: the record is not sent later
                raise DeliveryError(f"not acknowledged by Kafka at {self._bootstrap} within "
                                    f"{self._delivery_timeout:g}s (KAFKA_DELIVERY_TIMEOUT_MS)") from None
            except Exception as exc:
                raise DeliveryError(
                    f"not delivered to {self.settings.topic(topic_name)}: {exc}", [exc]
                ) from exc
        return fut

    def _on_delivery(self, fut: asyncio.Future[Any]) -> None:
        self._pending.discard(fut)
        if fut.cancelled():
            self._failures.append(asyncio.CancelledError("send cancelled"))
        elif fut.exception() is not None:
            exc = fut.exception()
            assert exc is not None
            self._failures.append(exc)


async def _abandon(producer: Any) -> None:
    """Close a producer without waiting for the records it still holds (aiokafka's stop() waits for
    every batch, and with idempotence it never expires one, so it would wait for the broker forever)."""
    task = getattr(getattr(producer, "_sender", None), "sender_task", None)
    if task is not None:
        task.cancel()
    await producer.stop()


class SyncCreditflowProducer:
    """Blocking facade: the async producer runs on its own event loop in a daemon thread."""

    def __init__(self, settings: Settings | None = None, *, timeout: float | None = None, **kwargs: Any) -> None:
        # Longer than the delivery timeout, so a slow delivery surfaces as DeliveryError, not as this.
        delivery_s = (settings or get_settings()).kafka_delivery_timeout_ms / 1000
        self._timeout = timeout if timeout is not None else delivery_s + 15.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="creditflow-producer", daemon=True
        )
        self._thread.start()
        # Constructed on the loop thread so aiokafka binds to that loop.
        self._producer: CreditflowProducer = self._run(self._make(settings, kwargs))

    @staticmethod
    async def _make(settings: Settings | None, kwargs: dict[str, Any]) -> CreditflowProducer:
        return CreditflowProducer(settings, **kwargs)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        fut: ConcurrentFuture[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(self._timeout)

    def start(self) -> None:
        self._run(self._producer.start())

    def emit_interaction(self, ev: Mapping[str, Any], *, wait: bool = False) -> None:
        self._run(self._producer.emit_interaction(ev, wait=wait))

    def emit_grant(self, g: Mapping[str, Any], *, wait: bool = False) -> None:
        self._run(self._producer.emit_grant(g, wait=wait))

    def emit_subscription_change(self, c: Mapping[str, Any], *, wait: bool = False) -> None:
        self._run(self._producer.emit_subscription_change(c, wait=wait))

    def flush(self) -> None:
        self._run(self._producer.flush())

    def close(self) -> None:
        if not self._loop.is_running():
            return
        try:
            self._run(self._producer.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self._timeout)
            self._loop.close()

    def __enter__(self) -> SyncCreditflowProducer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
