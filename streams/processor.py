"""The processor role: meter interaction events and fold credit grants, in batches.

Order inside one batch is what makes a crash harmless (see ``streams/meter.py``):
1. grants, then events, are decoded, priced and debited against in-memory account state;
2. outputs (usage-enriched, refinement-feed, dead-letters) are published and acknowledged;
3. account state is published to its changelog and acknowledged;
4. only then are the input offsets committed.
A crash before 4 replays the batch: accounts whose state was written skip events they already
applied (their outputs exist), the rest recompute identical outputs, and the sink keeps one copy.

It is a plain aiokafka consumer run as a service of the Faust app, not a Faust agent. Measured here:
Faust's per-message consumer path was about two thirds of the processor's CPU, and after some
rebalances its acked-offset bookkeeping stopped committing a partition for good while events kept
flowing. Reading batches with ``getmany`` and committing explicitly avoids both.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError
from aiokafka.structs import OffsetAndMetadata
from mode import Service

from streams.codec import Decoder, SchemaRegistryClient, encode_single_object
from streams.dead_letters import encode_dead_letter
from streams.meter import Meter, MeterResult, RawRecord
from streams.policy import load_policy
from streams.settings import Settings
from streams.tables import ChangelogTable

log = logging.getLogger("creditflow.processor")
_trace = log.info if os.environ.get("CREDITFLOW_TRACE_BATCHES") else log.debug
# An unexpected error inside a batch must not let its offsets be committed: exit and replay.
_CRASH_EXIT_CODE = 70


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    # aiokafka runs these on its coordinator task, concurrently with getmany and with a batch in
    # flight, so both take the processor's lock: state is never dropped under a running batch.
    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        async with self.processor.lock:
            self.processor.release({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        async with self.processor.lock:
            await self.processor.recover({tp.partition for tp in assigned})


class Processor(Service):
    def __init__(self, settings: Settings, bootstrap: str, names: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.bootstrap = bootstrap
        self.names = names
        self.group = f"{settings.app_id}-processor"
        policy = load_policy(settings.policy_path)
        registry = SchemaRegistryClient(settings.schema_registry_url) if settings.schema_registry_url else None
        self.meter = Meter(policy, Decoder("InteractionEvent", registry), Decoder("CreditGrant", registry))
        self.events_topic = names["interaction-events"]
        self.grants_topic = names["credit-grants"]
        self.usage = ChangelogTable("account-usage", f"{settings.app_id}-account-usage-changelog",
                                    settings.partitions)
        self.grants = ChangelogTable("account-grants", f"{settings.app_id}-account-grants-changelog",
                                     settings.partitions)
        # Partitions whose state is in memory; a batch touching any other partition waits for recovery.
        self.owned: set[int] = set()
        self.lock = asyncio.Lock()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.metered = 0

    async def on_start(self) -> None:
        for table in (self.usage, self.grants):
            await table.ensure_topic(self.bootstrap, self.settings.replication_factor)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True,
            compression_type="lz4", linger_ms=5, max_batch_size=1024 * 1024,
        )
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.settings.process_batch,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            # Range assignment hands partition i of both input topics to the same worker, so an
            # account's grants and its events meet in one process.
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            max_poll_interval_ms=300_000,
        )
        await self.consumer.start()
        self.consumer.subscribe(topics=[self.grants_topic, self.events_topic], listener=_Listener(self))

    async def on_stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()

    def release(self, partitions: set[int]) -> None:
        self.owned -= partitions
        for table in (self.usage, self.grants):
            table.drop(partitions)

    async def recover(self, partitions: set[int]) -> None:
        new = partitions - self.owned
        for table in (self.usage, self.grants):
            await table.recover(self.bootstrap, new)
        self.owned |= new

    @Service.task
    async def _run(self) -> None:
        while self.consumer is None and not self.should_stop:
            await asyncio.sleep(0.05)
        assert self.consumer is not None
        within_ms = int(self.settings.process_within * 1000)
        while not self.should_stop:
            fetched = await self.consumer.getmany(timeout_ms=within_ms, max_records=self.settings.process_batch)
            if not fetched:
                continue
            try:
                async with self.lock:
                    # Records can arrive before the assignment callback has recovered their state.
                    await self.recover({tp.partition for tp in fetched})
                    await self._process(fetched)
            except Exception as exc:
                log.critical("processing a batch failed; exiting without committing it so it is replayed: %r",
                             exc, exc_info=exc)
                logging.shutdown()
                os._exit(_CRASH_EXIT_CODE)

    async def _process(self, fetched: Mapping[TopicPartition, Sequence[Any]]) -> None:
        t0 = time.perf_counter()
        grant_records: list[RawRecord] = []
        event_records: list[RawRecord] = []
        for tp, records in fetched.items():
            target = grant_records if tp.topic == self.grants_topic else event_records
            target.extend(RawRecord(r.topic, r.partition, r.offset, r.key, r.value, list(r.headers or ()))
                          for r in records)
        now = _now_ms()
        granted = self.meter.grants(grant_records, self.grants.get, now)
        # Grants of this batch are visible to its events.
        for account, (_partition, state) in granted.grant_updates.items():
            self.grants.data[account] = state
        metered = self.meter.meter(event_records, self.usage.get, self.grants.get, now)
        t1 = time.perf_counter()
        await self._publish(granted)
        await self._publish(metered)
        t2 = time.perf_counter()
        assert self.producer is not None
        writes: list[Awaitable[Any]] = []
        for account, (partition, state) in granted.grant_updates.items():
            writes.append(await self.grants.put(self.producer, partition, account, state))
        for account, (partition, state) in metered.usage_updates.items():
            writes.append(await self.usage.put(self.producer, partition, account, state))
        if writes:
            await asyncio.gather(*writes)
        assert self.consumer is not None
        try:
            await self.consumer.commit({tp: OffsetAndMetadata(records[-1].offset + 1, "")
                                        for tp, records in fetched.items() if records})
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced under this batch; its next owner replays it, and the replay is
            # harmless (state says what was applied, the sink keeps one copy of each output).
            log.warning("commit after a rebalance failed, the batch will be replayed: %r", exc)
        self.metered += len(metered.enriched)
        _trace("batch: %d events, %d grants, %d replays skipped, %d dead: meter %.1f ms, publish %.1f ms, "
               "state+commit %.1f ms", len(event_records), len(grant_records), metered.skipped_replays,
               len(metered.dead_letters) + len(granted.dead_letters), (t1 - t0) * 1e3, (t2 - t1) * 1e3,
               (time.perf_counter() - t2) * 1e3)

    async def _publish(self, result: MeterResult) -> None:
        producer = self.producer
        assert producer is not None
        pending: list[Awaitable[Any]] = []
        # Metered records go out as one record batch per partition: the same partition as their
        # input (the sink's replay guard relies on one input partition feeding exactly one output
        # partition, in order), and building batches directly skips per-record send overhead.
        by_partition: dict[int, list[dict[str, Any]]] = {}
        for rec in result.enriched:
            by_partition.setdefault(rec["source_partition"], []).append(rec)
        topic = self.names["usage-enriched"]
        for partition, recs in by_partition.items():
            batch = producer.create_batch()
            for rec in recs:
                value = encode_single_object(rec, "UsageEnriched")
                key = rec["account_id"].encode()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            if batch.record_count():
                pending.append(await producer.send_batch(batch, topic, partition=partition))
        for s in result.samples:
            pending.append(await producer.send(
                self.names["refinement-feed"], encode_single_object(s, "RefinementSample"),
                key=s["account_id"].encode()))
        for d in result.dead_letters:
            pending.append(await producer.send(
                self.names["dead-letters"], encode_dead_letter(d), key=d["dead_letter_id"].encode()))
        if pending:
            await asyncio.gather(*pending)


def register_processor(app: faust.App, settings: Settings, bootstrap: str, names: Mapping[str, str]) -> Processor:
    processor = Processor(settings, bootstrap, names)
    app.service(processor)  # type: ignore[arg-type]  # Faust accepts instances too, its stub says classes
    app.creditflow_processor = processor  # type: ignore[attr-defined]
    return processor
