"""A service that consumes partitioned topics in batches, with per-partition state that moves with
its partitions: the skeleton of the processor.

It consumes; what a batch writes and in which order (outputs, state, offsets), and the fence against
a worker that lost its partitions, are ``streams/runtime/checkpoint.py``'s. aiokafka runs the
rebalance callbacks on its coordinator task, concurrently with ``getmany`` and a batch in flight,
so batches and callbacks share one lock, and a batch first recovers any partition whose state the
assignment callback has not loaded yet.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from mode import Service

from streams.runtime import gc_policy
from streams.runtime.changelog import ChangelogTable
from streams.runtime.kafka_clients import KafkaClients
from streams.runtime.metrics import Metrics
from streams.settings import Settings

# An unexpected error inside a batch must not let its offsets be committed: exit and replay.
CRASH_EXIT_CODE = 70
# How long a stopping worker waits for its batch in flight before leaving it to be replayed.
DRAIN_TIMEOUT_S = 30.0

Fetched = Mapping[TopicPartition, Sequence[Any]]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: PartitionedService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        async with self.service.lock:
            self.service.release({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.service.metrics.assigned(self.service.group, assigned)
        async with self.service.lock:
            await self.service.on_assigned({tp.partition for tp in assigned})


class PartitionedService(Service):
    logger: logging.Logger = logging.getLogger("creditflow")
    # The consumer's Kafka client.id; the processor advertises its web URL in it (streams/runtime/owners.py).
    client_id: str | None = None

    def __init__(self, settings: Settings, bootstrap: str, group: str, tables: Sequence[ChangelogTable],
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.bootstrap = bootstrap
        self.kafka = KafkaClients(settings, bootstrap)
        self.group = group
        self.tables = tuple(tables)
        for table in self.tables:
            table.hot_max = settings.state_hot_keys
        # Partitions whose state is in memory.
        self.owned: set[int] = set()
        self.lock = asyncio.Lock()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        # The app's metrics once registered (streams/runtime/health.py watch_service); a private set before.
        self.metrics = Metrics()

    # -- what a subclass provides --------------------------------------------------------------------

    def input_topics(self) -> list[str]:
        raise NotImplementedError

    async def process(self, fetched: Fetched) -> None:
        """Handle one batch: its outputs, state and input offsets (``streams/runtime/checkpoint.py``)."""
        raise NotImplementedError

    async def prepare(self) -> None:
        """Extra set-up before consuming (topics of its own, ...)."""

    def on_release(self, partitions: set[int]) -> None:
        """Forget in-memory extras of partitions that moved away."""

    async def on_assigned(self, partitions: set[int]) -> None:
        """The group assigned ``partitions`` (a new generation): recover their state."""
        await self.recover(partitions)

    # -- the skeleton -----------------------------------------------------------------------------------

    async def on_start(self) -> None:
        for table in self.tables:
            await table.ensure_topic(self.kafka, self.settings.replication_factor)
        await self.prepare()
        self.producer = self.kafka.producer(
            acks="all", enable_idempotence=True,
            compression_type=self.settings.compression_type, linger_ms=5, max_batch_size=1024 * 1024,
        )
        await self.producer.start()
        self.consumer = self.kafka.consumer(
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.settings.process_batch,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            # Range assignment hands partition i of every input to the same worker, so everything
            # keyed by one account (grants, events, reviews) meets that account's state.
            partition_assignment_strategy=(RangePartitionAssignor,),
            # Records of an aborted transaction (a dead-letter replay that died) are never read.
            isolation_level="read_committed",
            **({"client_id": self.client_id} if self.client_id else {}),
            max_poll_interval_ms=300_000,
            **self.kafka.group_member(self.group.removeprefix(f"{self.settings.app_id}-")),
        )
        await self.consumer.start()
        await self._await_topics(self.consumer, self.input_topics())
        self.consumer.subscribe(topics=self.input_topics(), listener=_Listener(self))

    async def _await_topics(self, consumer: AIOKafkaConsumer, topics: Sequence[str], timeout: float = 30.0) -> None:
        """Until the cluster metadata shows every input topic. A topic created a moment ago (by
        ``prepare`` or ``ensure_topics``) may not be in the broker's metadata yet, and a subscription
        made then leaves it unassigned until the next metadata refresh, five minutes later."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            await consumer._client.force_metadata_update()
            missing = [t for t in topics if not consumer.partitions_for_topic(t)]
            if not missing:
                return
            if asyncio.get_running_loop().time() > deadline:
                self.logger.warning("topics %s are not in the cluster metadata; they will be consumed once "
                                    "they exist and the metadata is refreshed", missing)
                return
            await asyncio.sleep(0.2)

    async def drain(self) -> None:
        """Wait for the batch in flight (it holds the lock) to publish, write its state and commit;
        no new batch starts once stopping."""
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S), self.lock:
                pass
        except TimeoutError:
            self.logger.warning("the batch in flight did not finish within %.0fs of shutdown; it will be replayed",
                                DRAIN_TIMEOUT_S)

    async def on_stop(self) -> None:
        # SIGTERM drains before the consumer leaves the group.
        await self.drain()
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        # The local stores are scratch (the changelogs hold the state): free their disk now.
        for table in self.tables:
            table.close()

    def release(self, partitions: set[int]) -> None:
        self.owned -= partitions
        for table in self.tables:
            table.drop(partitions)
        self.on_release(partitions)

    async def recover(self, partitions: set[int]) -> None:
        new = partitions - self.owned
        for table in self.tables:
            await table.recover(self.kafka, new)
        self.owned |= new

    async def save(self, changes: Iterable[tuple[ChangelogTable, int, str, Any]]) -> None:
        """Write (table, partition, key, value) changes and wait until every changelog record is
        acknowledged: a batch's offsets may be committed only after its state is durable."""
        assert self.producer is not None
        by_table: dict[ChangelogTable, list[tuple[int, str, Any]]] = {}
        for table, partition, key, value in changes:
            by_table.setdefault(table, []).append((partition, key, value))
        writes = [f for table, items in by_table.items() for f in await table.put_many(self.producer, items)]
        # Every change of the batch is written: the point where values the batch only read (grants
        # the meter debits against) may go back to bytes, also in tables it did not write.
        for table in self.tables:
            table.evict()
        if writes:
            await asyncio.gather(*writes)

    def die(self, what: str, exc: BaseException) -> None:
        self.logger.critical("%s failed; exiting without committing so the batch is replayed: %r", what, exc,
                          exc_info=exc)
        logging.shutdown()
        os._exit(CRASH_EXIT_CODE)

    @Service.task
    async def _run(self) -> None:
        while self.consumer is None and not self.should_stop:
            await asyncio.sleep(0.05)
        assert self.consumer is not None
        within_ms = int(self.settings.process_within * 1000)
        while not self.should_stop:
            fetched = await self.consumer.getmany(timeout_ms=within_ms, max_records=self.settings.process_batch)
            self.metrics.consumed(self.group, fetched)
            if not fetched or self.should_stop:
                continue
            try:
                async with self.lock:
                    # Records can arrive before the assignment callback has recovered their state.
                    await self.recover({tp.partition for tp in fetched})
                    with gc_policy.paused():
                        await self.process(fetched)
            except Exception as exc:
                if self.should_stop:
                    # Shutting down under a batch (its producer or consumer already closing): it was
                    # not committed, so it is replayed on the next start. Not a crash.
                    self.logger.info("batch interrupted by shutdown; it will be replayed: %r", exc)
                    return
                self.die(f"{type(self).__name__} batch", exc)
