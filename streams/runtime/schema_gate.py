"""Holding back the records whose registry schema is not known yet, one partition at a time.

Before a batch is decoded, the gate collects the schema ids of its Confluent-framed records that are
neither known nor known missing, asks the registry for them (``streams/wire/registry.py``) and waits
a bounded time. For every partition where an id is still undecided, the records from the first such
record on are cut from the batch, the consumer is sought back to that record and the partition is
paused: nothing at or after it is decoded, metered or committed, so the partition resumes exactly
where it stopped once the registry answers. Other partitions, and the records before the cut, go on
(single-object records need no registry). Only a definitive "not found" lets a record through to
be dead-lettered as UNKNOWN_SCHEMA.

Both consumers use it: the processor for its inputs, the sink for the topics it reads that platform
services or operators write (``sinks/routing.py`` ``registry_framed``). Each resumes held partitions
from a task calling :meth:`SchemaGate.resume_ready`, and releases them when they are revoked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.settings import Settings
from streams.wire.codec import CONFLUENT_MAGIC, SchemaRegistryClient
from streams.wire.registry import RegistrySchemas, confluent_schema_id

log = logging.getLogger("creditflow.schema_gate")


def cut_undecided(records: Sequence[Any], undecided: Collection[int]) -> int | None:
    """Index of the first record whose schema id is undecided, None when every record may go on."""
    for i, rec in enumerate(records):
        sid = confluent_schema_id(rec.value)
        if sid is not None and sid in undecided:
            return i
    return None


class SchemaGate:
    def __init__(self, schemas: RegistrySchemas, topics: Collection[str], wait: float) -> None:
        self.schemas = schemas
        self.topics = frozenset(topics)
        self.wait = wait
        # Paused partitions -> the undecided ids in the records held back there.
        self.held: dict[TopicPartition, set[int]] = {}

    async def admit(self, consumer: AIOKafkaConsumer, fetched: dict[TopicPartition, Sequence[Any]],
                    current: Callable[[], bool] | None = None) -> dict[TopicPartition, Sequence[Any]]:
        """The part of ``fetched`` that can be decoded now; the rest is sought back and paused.

        ``current`` tells, after the wait for the registry, whether the fetch is still of this
        assignment. A rebalance during the wait reset the positions to the committed offsets, so a
        stale fetch must be neither used nor cut: seeking to its cut would skip whatever lies between
        the committed offset and that cut. Then nothing is sought or paused and nothing admitted."""
        needed: set[int] = set()
        for tp, records in fetched.items():
            if tp.topic in self.topics:
                for rec in records:
                    value = rec.value
                    # Inline test of the magic byte: this runs for every record of every batch.
                    if value and value[0] == CONFLUENT_MAGIC:
                        sid = confluent_schema_id(value)
                        if sid is not None:
                            needed.add(sid)
        if not needed:
            return fetched
        undecided = self.schemas.undecided(needed)
        if not undecided:
            return fetched
        undecided = await self.schemas.resolve(undecided, self.wait)
        if current is not None and not current():
            return {}
        if not undecided:
            return fetched
        admitted = dict(fetched)
        assigned = consumer.assignment()
        for tp, records in fetched.items():
            if tp.topic not in self.topics:
                continue
            cut = cut_undecided(records, undecided)
            if cut is None:
                continue
            if cut:
                admitted[tp] = records[:cut]
            else:
                del admitted[tp]
            waiting = {sid for rec in records[cut:] if (sid := confluent_schema_id(rec.value)) in undecided}
            if tp in assigned:
                consumer.seek(tp, records[cut].offset)
                consumer.pause(tp)
                self.held[tp] = waiting
                log.info("%s waits at offset %d for registry schema ids %s", tp, records[cut].offset,
                         sorted(waiting)[:10])
        return admitted

    def resume_ready(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        """Resume held partitions whose ids are all decided; re-request the others' ids (a lookup may
        have been refused for room). Returns the partitions resumed."""
        resumed: list[TopicPartition] = []
        if not self.held:
            return resumed
        assigned = consumer.assignment()
        for tp, ids in list(self.held.items()):
            if tp not in assigned:
                del self.held[tp]  # moved away: its next owner starts from the committed offset
                continue
            undecided = self.schemas.undecided(ids)
            if undecided:
                self.schemas.request(undecided)
                continue
            del self.held[tp]
            consumer.resume(tp)
            resumed.append(tp)
        return resumed

    def forget(self, partitions: Collection[int]) -> None:
        """Released partition numbers: that partition of every gated topic (the processor's inputs
        are co-partitioned)."""
        self.release([tp for tp in self.held if tp.partition in partitions])

    def release(self, tps: Iterable[TopicPartition]) -> None:
        """Released topic partitions (the sink's topics are not co-partitioned). Their next owner
        starts from the committed offset, which never passed a cut."""
        for tp in tps:
            self.held.pop(tp, None)


def registry_schemas(settings: Settings) -> RegistrySchemas | None:
    """The asynchronous schema cache for the configured registry (None without one)."""
    if not settings.schema_registry_url:
        return None
    return RegistrySchemas.for_client(
        SchemaRegistryClient(settings.schema_registry_url), settings.data_dir,
        concurrency=settings.registry_lookup_concurrency, timeout=settings.registry_timeout_seconds,
        not_found_ttl=settings.registry_not_found_ttl_seconds, backoff_max=settings.registry_backoff_max_seconds,
    )
