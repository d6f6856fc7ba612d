"""The processor role: meter interaction events, fold credit grants, detect credit-gaming, in batches.

Per batch, for each input partition it read: grants, then events, are decoded, priced and debited
against in-memory account state (``streams/credits/meter.py``); reviews, fingerprint observations
from other workers, then the grants and metered events are folded into detection state
(``streams/detection/engine.py``) from the same decoded values. What that produced is written by
``streams/runtime/checkpoint.py``, which owns exactly-once: the write order (outputs, detection
state, account state, input offsets, one transaction per input partition), the fence against a
worker that lost its partitions, and the list of replay guards.

It is a plain aiokafka consumer run as a service of the Faust app, not a Faust agent. Measured here:
Faust's per-message consumer path was about two thirds of the processor's CPU, and after some
rebalances its acked-offset bookkeeping stopped committing a partition for good while events kept
flowing. Reading batches with ``getmany`` and committing explicitly avoids both.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Awaitable, Mapping
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from mode import Service

from streams.credits.account_state import usage_codec
from streams.credits.balances import BalanceBatch, batch_balances
from streams.credits.meter import DedupWindow, InputRecord, Meter, MeterResult
from streams.credits.policy import load_policy
from streams.detection.engine import FLUSH_MAX, Detection, DetectionBatch
from streams.runtime.balance_publish import send_balances
from streams.runtime.batch_send import KeyPartitions, Outgoing, send_partitioned
from streams.runtime.changelog import ChangelogTable
from streams.runtime.checkpoint import BatchWrites, Checkpoint, next_offsets
from streams.runtime.markers import past_markers
from streams.runtime.partitioned import Fetched, PartitionedService
from streams.runtime.repartition import Owners, forwards
from streams.runtime.schema_gate import SchemaGate, registry_schemas
from streams.runtime.topics import (
    CREDIT_GRANTS,
    DEAD_LETTERS,
    GAMING_REVIEWS,
    INTERACTION_EVENTS,
    REFINEMENT_FEED,
    USAGE_ENRICHED,
    create_topic,
    retention_ms,
)
from streams.settings import Settings
from streams.wire.codec import Decoder, encode_single_object
from streams.wire.dead_letters import encode_dead_letter
from streams.wire.headers import source_offset_header

log = logging.getLogger("creditflow.processor")
_trace = log.info if os.environ.get("CREDITFLOW_TRACE_BATCHES") else log.debug


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Processor(PartitionedService):
    logger = log

    def __init__(self, settings: Settings, bootstrap: str, names: Mapping[str, str], **kwargs: Any) -> None:
        usage = ChangelogTable("account-usage", f"{settings.app_id}-account-usage-changelog", settings.partitions,
                               state_dir=settings.state_dir,
                               codec=usage_codec(settings.usage_state_legacy_json))
        grants = ChangelogTable("account-grants", f"{settings.app_id}-account-grants-changelog",
                                settings.partitions, state_dir=settings.state_dir)
        detection = Detection(settings, names)
        super().__init__(settings, bootstrap, f"{settings.app_id}-processor", (usage, grants, *detection.tables),
                         **kwargs)
        self.usage, self.grants = usage, grants
        self.detection = detection
        self.names = names
        policy = load_policy(settings.policy_path)
        self.checkpoint = Checkpoint(settings, bootstrap, self.group, self.tables)
        # Partitions whose transaction was fenced: taken again only after a new assignment.
        self.fenced: set[int] = set()
        self.duplicates = 0
        self.events_topic = names[INTERACTION_EVENTS]
        self.grants_topic = names[CREDIT_GRANTS]
        self.reviews_topic = names[GAMING_REVIEWS]
        # Registry schemas are fetched without blocking and records waiting for one hold their partition.
        self.schemas = registry_schemas(settings)
        self.gate = (SchemaGate(self.schemas, (self.events_topic, self.grants_topic, self.reviews_topic),
                                settings.registry_wait_seconds) if self.schemas is not None else None)
        self.meter = Meter(policy, Decoder("InteractionEvent", self.schemas), Decoder("CreditGrant", self.schemas),
                           DedupWindow(int(settings.dedup_window_days * 86_400), settings.dedup_max_ids))
        if self.schemas is not None:
            detection.review_decoder = Decoder("ReviewDecision", self.schemas)
        self.owners: Owners | None = None
        self.fp_topic = detection.fp_topic
        self.flush_every = settings.detector_flush_seconds
        self.metered = 0
        self.unpriced: dict[str, int] = {}  # model -> events metered at the fallback price
        # Fingerprint partitions: observations for one of ours are folded without the round trip
        # through Kafka only once everything already published to it has been consumed (else an
        # older observation still in the topic would arrive after a newer one and be dropped as a
        # replay). ``fp_required[p]`` is that end offset; ``fp_stale`` the partitions to re-check.
        self.fp_required: dict[int, int] = {}
        self.fp_stale: set[int] = set()
        self.fp_recheck_all = True

    def input_topics(self) -> list[str]:
        return [self.grants_topic, self.reviews_topic, self.events_topic, self.fp_topic]

    async def prepare(self) -> None:
        # Same partition count as the inputs: reviews keyed by a fingerprint must land on the
        # partition number that holds the fingerprint's alert state.
        await create_topic(self.kafka, self.fp_topic, self.settings.partitions,
                           self.settings.replication_factor, {"retention.ms": str(retention_ms(self.settings))})
        await self.checkpoint.prepare()

    async def on_assigned(self, partitions: set[int]) -> None:
        self.fenced -= partitions  # a new generation: they are ours again
        await self.recover(partitions)

    async def recover(self, partitions: set[int]) -> None:
        new = partitions - self.owned - self.fenced
        if new:
            # A partition this worker gained may have fingerprint observations in flight from its
            # previous owner: fold directly only after they are consumed.
            self.fp_recheck_all = True
            await self.checkpoint.acquire(new)  # the fence comes before reading the state
        await super().recover(new)
        self.detection.on_recovered(new)

    def on_release(self, partitions: set[int]) -> None:
        self.detection.on_release(partitions)
        self.checkpoint.release(partitions)
        if self.gate is not None:
            self.gate.forget(partitions)

    async def _owners(self) -> Owners:
        """Owner partitions of the inputs (murmur2 of the account id), once their sizes are known."""
        if self.owners is None:
            assert self.producer is not None
            self.owners = Owners({t: len(await self.producer.partitions_for(t))
                                  for t in (self.events_topic, self.grants_topic)})
            self.meter.event_owner = self.owners.lookup(self.events_topic)
            self.meter.grant_owner = self.owners.lookup(self.grants_topic)
        return self.owners

    async def on_stop(self) -> None:
        # The batch in flight commits through the checkpoint's producers: drain before closing them.
        await self.drain()
        await self.checkpoint.close()
        await super().on_stop()
        if self.schemas is not None:
            await self.schemas.close()

    async def _fp_partitions_here(self) -> set[int]:
        """Fingerprint partitions this worker holds and has consumed up to ``fp_required``."""
        consumer, producer = self.consumer, self.producer
        assert consumer is not None and producer is not None
        if self.detection.fp_partitions is None:
            self.detection.fp_partitions = KeyPartitions(len(await producer.partitions_for(self.fp_topic)))
            self.detection.source_partitions = len(await producer.partitions_for(self.events_topic))
        held = [tp for tp in consumer.assignment() if tp.topic == self.fp_topic]
        stale = held if self.fp_recheck_all else [tp for tp in held if tp.partition in self.fp_stale]
        if stale:
            for tp, end in (await consumer.end_offsets(stale)).items():
                self.fp_required[tp.partition] = max(end, self.fp_required.get(tp.partition, 0))
        self.fp_recheck_all = False
        self.fp_stale.clear()
        return {tp.partition for tp in held
                if await consumer.position(tp) >= self.fp_required.get(tp.partition, 0)}

    async def process(self, fetched: Fetched) -> None:
        t0 = time.perf_counter()
        if self.gate is not None:
            assert self.consumer is not None
            # Records waiting for a registry schema are cut here and are not committed.
            fetched = await self.gate.admit(self.consumer, dict(fetched))
            if not fetched:
                return
        owners = await self._owners()
        grant_records: list[InputRecord] = []
        event_records: list[InputRecord] = []
        reviews: list[InputRecord] = []
        observations: list[InputRecord] = []
        by_topic = {self.grants_topic: grant_records, self.events_topic: event_records,
                    self.reviews_topic: reviews, self.fp_topic: observations}
        fetched = {tp: records for tp, records in fetched.items() if tp.partition in self.owned}  # not fenced
        for tp, records in fetched.items():
            # aiokafka's records carry every field the meter reads; no copy into another type.
            by_topic[tp.topic].extend(records)
        offsets = await past_markers(self.consumer, next_offsets(fetched))
        self.checkpoint.begin(offsets)
        # Per-account state of earlier batches makes way for this batch's accounts before it is read,
        # so decoded state peaks at ``state_hot_keys`` per table, not that plus the batch's accounts.
        accounts = {r.key.decode(errors="replace") for records in (grant_records, event_records) for r in records
                    if r.key}
        for table in (self.usage, self.grants, self.detection.accounts):
            table.make_room(accounts)
        owners.of(self.events_topic).prime(r.key for r in event_records if r.key)
        now = _now_ms()
        granted = self.meter.grants(grant_records, self.grants.get, now)
        # Grants of this batch are visible to its events.
        for account, (_partition, state) in granted.grant_updates.items():
            self.grants.set(account, state)
        metered = self.meter.meter(event_records, self.usage.get, self.grants.get, now)
        self._count_unpriced(metered.unpriced)
        # One balance per account whose grants or usage changed; its memory of notifications sent
        # goes into the usage state written below, after they are published.
        balances = batch_balances(self.meter.policy, granted.grant_updates, granted.accepted_grants,
                                  metered.usage_updates, self.usage.get, self.grants.get, now)
        t1 = time.perf_counter()
        detection, found = self.detection, DetectionBatch()
        fp_here = await self._fp_partitions_here()
        # Grants first (their dates inform this batch's events), reviews next (a verdict applies to
        # firings that follow it), then observations from other workers (older than this batch's).
        detection.on_grants(found, granted.accepted_grants)
        for r in reviews:
            detection.on_review(found, r.partition, r.value)
        for r in observations:
            detection.on_fingerprint(found, r.partition, r.key, r.value)
        detection.on_metered(found, metered.enriched, fp_here)
        t2 = time.perf_counter()
        self.checkpoint.outputs = self.producer
        lost = await self.checkpoint.write(BatchWrites(
            functools.partial(self._publish, granted, metered, found, balances),
            detection.changes(found),
            [*((self.grants, p, account, state) for account, (p, state) in granted.grant_updates.items()),
             *((self.usage, p, account, state) for account, (p, state) in metered.usage_updates.items()),
             *((self.usage, p, account, state) for account, (p, state) in balances.usage_updates.items())],
            offsets))
        if lost:
            await self._lost(lost)
        else:
            self.fp_stale.update(found.fingerprints)
            self.metered += len(metered.enriched)
            self.duplicates += metered.duplicates
            self.metrics.committed(self.group, {tp: r[-1].offset + 1 for tp, r in fetched.items() if r})
            self.metrics.processor_batch(
                events=len(event_records), metered=len(metered.enriched), skipped=metered.skipped_replays,
                dead=[*granted.dead_letters, *metered.dead_letters], alerts=found.alerts,
                started=t0, write_phases=self.checkpoint.last_phases, unpriced=metered.unpriced)
        _trace("batch: %d events, %d grants, %d reviews, %d observations in, %d replays skipped, %d duplicates, "
               "%d dead, %d alerts, %d observations folded here, %d sent, %d partitions lost: meter %.1f ms, "
               "detect %.1f ms, write %.1f ms", len(event_records), len(grant_records), len(reviews),
               len(observations), metered.skipped_replays, metered.duplicates,
               len(metered.dead_letters) + len(granted.dead_letters), len(found.alerts), found.folded_here,
               sum(len(v) for v in found.fingerprints.values()), len(lost), (t1 - t0) * 1e3, (t2 - t1) * 1e3,
               (time.perf_counter() - t2) * 1e3)

    async def _lost(self, partitions: set[int]) -> None:
        """Partitions whose transaction was fenced: another worker owns them now. Drop what this one
        computed for them and read them again from the committed offsets if they come back."""
        self.fenced |= partitions
        self.release(partitions)
        consumer = self.consumer
        assert consumer is not None
        for tp in [tp for tp in consumer.assignment() if tp.partition in partitions]:
            committed = await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)

    def _count_unpriced(self, unpriced: Mapping[str, int]) -> None:
        """Events metered at the policy's fallback price, by model (``self.unpriced``); a model's
        first sighting is logged, so a launch missing from the price table is noticed."""
        for model, n in unpriced.items():
            if model not in self.unpriced:
                log.warning("model %r is not in policy %s's price table: metered at the '*' fallback price",
                            model, self.meter.policy.version)
            self.unpriced[model] = self.unpriced.get(model, 0) + n

    async def _publish(self, granted: MeterResult, metered: MeterResult, found: DetectionBatch,
                       balances: BalanceBatch, producer: AIOKafkaProducer) -> list[Awaitable[Any]]:
        pending: list[Awaitable[Any]] = []
        # Metered records go to the same partition as their input: the sink's replay guard relies on
        # one input partition feeding exactly one output partition, in order.
        by_partition: dict[int, list[Outgoing]] = {}
        for rec in metered.enriched:
            by_partition.setdefault(rec["source_partition"], []).append(
                (rec["account_id"].encode(), encode_single_object(rec, "UsageEnriched"),
                 [source_offset_header(rec["source_offset"])]))
        pending.extend(await send_partitioned(producer, self.names[USAGE_ENRICHED], by_partition))
        if granted.forward or metered.forward:
            owners = await self._owners()
            for topic, result in ((self.grants_topic, granted), (self.events_topic, metered)):
                pending.extend(await send_partitioned(producer, topic, forwards(result.forward, owners.of(topic))))
        for result in (granted, metered):
            for s in result.samples:
                pending.append(await producer.send(
                    self.names[REFINEMENT_FEED], encode_single_object(s, "RefinementSample"),
                    key=s["account_id"].encode()))
            for d in result.dead_letters:
                pending.append(await producer.send(
                    self.names[DEAD_LETTERS], encode_dead_letter(d), key=d["dead_letter_id"].encode()))
        pending.extend(await self.detection.publish(producer, found))
        pending.extend(await send_balances(producer, self.names, balances))
        return pending

    # -- registry waits -----------------------------------------------------------------------------

    @Service.task
    async def _resume_held(self) -> None:
        """Resume partitions held for registry schemas as soon as their ids are decided."""
        while not self.should_stop:
            await self.sleep(0.2)
            if self.gate is not None and self.consumer is not None and self.gate.held:
                async with self.lock:
                    self.gate.resume_ready(self.consumer)

    # -- the detectors' timer ---------------------------------------------------------------------

    @Service.task
    async def _timer(self) -> None:
        while not self.should_stop:
            await self.sleep(self.flush_every)
            if self.producer is None or self.should_stop:
                continue
            try:
                async with self.lock:
                    await self.flush(limit=FLUSH_MAX)
            except Exception as exc:
                if self.should_stop:
                    return
                # Nothing to replay here (no input offsets), but state may be half-written: restart.
                self.die("detector flush", exc)

    async def flush(self, limit: int | None = None, *, force: bool = False) -> int:
        """Evaluate quiet entities (see ``Detection.evaluate_quiet``), publish what fires, write their
        state (no input offsets). Caller holds ``self.lock``. Returns entities evaluated."""
        found = DetectionBatch()
        if self.producer is not None and self.consumer is not None:
            # ``force``: the input is complete, so no source can hold anything back any more.
            self.detection.tick(found, self.owned, await self._fp_partitions_here(), all_idle=force)
        n = self.detection.evaluate_quiet(found, limit, force=force)
        if n or found.fps or found.fingerprints or found.clocks or found.alerts:
            self.checkpoint.outputs = self.producer
            lost = await self.checkpoint.write(BatchWrites(
                functools.partial(self.detection.publish, batch=found), self.detection.changes(found)))
            if lost:
                await self._lost(lost)
            else:
                self.metrics.alerts_flushed(found.alerts)
        return n


def register_processor(app: faust.App, settings: Settings, bootstrap: str, names: Mapping[str, str]) -> Processor:
    from streams.balance_lookup import register_balance_lookup
    from streams.runtime.health import watch_service
    from streams.runtime.owners import client_id_for
    from streams.runtime.web import url_for

    processor = Processor(settings, bootstrap, names)
    web_url = url_for(settings.web_host, app.conf.web_port)
    processor.client_id = client_id_for(web_url)
    register_balance_lookup(app, processor, web_url)
    watch_service(app, processor)
    app.service(processor)  # type: ignore[arg-type]  # Faust accepts instances too, its stub says classes
    app.creditflow_processor = processor  # type: ignore[attr-defined]
    return processor
