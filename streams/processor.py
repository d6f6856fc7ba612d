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
from collections.abc import Awaitable, Mapping
from typing import Any

import faust

from streams.batch_send import Outgoing, send_partitioned
from streams.codec import Decoder, SchemaRegistryClient, encode_single_object
from streams.dead_letters import encode_dead_letter
from streams.headers import source_offset_header
from streams.meter import InputRecord, Meter, MeterResult
from streams.partitioned import Fetched, PartitionedService
from streams.policy import load_policy
from streams.settings import Settings
from streams.tables import ChangelogTable

log = logging.getLogger("creditflow.processor")
_trace = log.info if os.environ.get("CREDITFLOW_TRACE_BATCHES") else log.debug


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Processor(PartitionedService):
    logger = log

    def __init__(self, settings: Settings, bootstrap: str, names: Mapping[str, str], **kwargs: Any) -> None:
        usage = ChangelogTable("account-usage", f"{settings.app_id}-account-usage-changelog", settings.partitions)
        grants = ChangelogTable("account-grants", f"{settings.app_id}-account-grants-changelog",
                                settings.partitions)
        super().__init__(settings, bootstrap, f"{settings.app_id}-processor", (usage, grants), **kwargs)
        self.usage, self.grants = usage, grants
        self.names = names
        policy = load_policy(settings.policy_path)
        registry = SchemaRegistryClient(settings.schema_registry_url) if settings.schema_registry_url else None
        self.meter = Meter(policy, Decoder("InteractionEvent", registry), Decoder("CreditGrant", registry))
        self.events_topic = names["interaction-events"]
        self.grants_topic = names["credit-grants"]
        self.metered = 0

    def input_topics(self) -> list[str]:
        return [self.grants_topic, self.events_topic]

    async def process(self, fetched: Fetched) -> None:
        t0 = time.perf_counter()
        grant_records: list[InputRecord] = []
        event_records: list[InputRecord] = []
        for tp, records in fetched.items():
            # aiokafka's records carry every field the meter reads; no copy into another type.
            (grant_records if tp.topic == self.grants_topic else event_records).extend(records)
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
        await self.save([
            *((self.grants, p, account, state) for account, (p, state) in granted.grant_updates.items()),
            *((self.usage, p, account, state) for account, (p, state) in metered.usage_updates.items()),
        ])
        await self.commit(fetched)
        self.metered += len(metered.enriched)
        _trace("batch: %d events, %d grants, %d replays skipped, %d dead: meter %.1f ms, publish %.1f ms, "
               "state+commit %.1f ms", len(event_records), len(grant_records), metered.skipped_replays,
               len(metered.dead_letters) + len(granted.dead_letters), (t1 - t0) * 1e3, (t2 - t1) * 1e3,
               (time.perf_counter() - t2) * 1e3)

    async def _publish(self, result: MeterResult) -> None:
        producer = self.producer
        assert producer is not None
        pending: list[Awaitable[Any]] = []
        # Metered records go to the same partition as their input: the sink's replay guard relies on
        # one input partition feeding exactly one output partition, in order.
        by_partition: dict[int, list[Outgoing]] = {}
        for rec in result.enriched:
            by_partition.setdefault(rec["source_partition"], []).append(
                (rec["account_id"].encode(), encode_single_object(rec, "UsageEnriched"),
                 [source_offset_header(rec["source_offset"])]))
        pending.extend(await send_partitioned(producer, self.names["usage-enriched"], by_partition))
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
