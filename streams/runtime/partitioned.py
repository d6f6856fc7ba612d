"""A service that consumes partitioned topics in batches, with per-partition state that moves with
its partitions: the skeleton of the processor.

It consumes; what a batch writes and in which order (outputs, state, offsets), and the fence against
a worker that lost its partitions, are ``streams/runtime/checkpoint.py``'s. aiokafka runs the
rebalance callbacks on its coordinator task, concurrently with ``getmany`` and a batch in flight,
so batches and callbacks share one lock, and a batch first recovers any partition whose state the
assignment callback has not loaded yet.

A retriable Kafka error in a batch (the cluster is away: ``streams/runtime/rewind.py``) is not a
crash: the service *rewinds*, under the same lock, before anything else can read the batch's
in-memory effects. It does what a restart would, without leaving the group: drop every partition's
in-memory state, replace the outputs producer, and, once the cluster answers again, take the
partitions back (re-acquire, re-read their state) and seek to the committed offsets.
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
from streams.runtime.background_stops import BackgroundStops
from streams.runtime.changelog import ChangelogTable
from streams.runtime.kafka_clients import KafkaClients
from streams.runtime.metrics import Metrics
from streams.runtime.rewind import BACKOFF_FIRST_S, BACKOFF_MAX_S, OutageLog, retriable
from streams.settings import Settings

# An unexpected error inside a batch must not let its offsets be committed: exit and replay.
CRASH_EXIT_CODE = 70
# How long a stopping worker waits for its batch in flight before leaving it to be replayed.
DRAIN_TIMEOUT_S = 30.0
# How long a replaced producer may take to stop (it flushes what it held: repeats nobody waits for).
STOP_TIMEOUT_S = 30.0
# Reading the committed offsets in a rewind: aiokafka waits for the group coordinator without end.
# (Not the state's recovery: a big state may take longer to read, and giving up would loop.)
COMMITTED_READ_S = 40.0

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
        self.outage = OutageLog(self.logger, settings.kafka_log_interval_seconds)
        self.rewinds = 0
        self._closing = BackgroundStops()

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
        self.producer = self._outputs_producer()
        await self.producer.start()
        self.consumer = self.kafka.consumer(
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.settings.process_batch,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            # aiokafka fetches a partition again only once its buffered records are consumed. With a
            # fetch answered at once, the fetch sent as a batch starts returns almost nothing, and
            # what arrives during the batch waits a whole extra batch: latency of two cycles. Held by
            # the broker a little (or until 1 MiB is there), the fetch brings what arrived while the
            # batch ran. At 3,300 events/s this took balance freshness p99 from 0.9-1.1 s to 0.26-0.55
            # s, the same throughput (docs/performance.md).
            fetch_min_bytes=1024 * 1024,
            fetch_max_wait_ms=self.settings.process_fetch_wait_ms,
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

    def _outputs_producer(self) -> AIOKafkaProducer:
        return self.kafka.producer(
            acks="all", enable_idempotence=True,
            compression_type=self.settings.compression_type, linger_ms=5, max_batch_size=1024 * 1024,
        )

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
        await self._closing.wait()
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

    def held_partitions(self) -> set[int]:
        """Every partition this worker holds anything of: state, an assignment (a subclass adds its own)."""
        assigned = self.consumer.assignment() if self.consumer is not None else set()
        return set(self.owned) | {tp.partition for tp in assigned}

    def coordinator_known(self) -> bool:
        """Whether the consumer knows its group coordinator right now: it marks it dead as soon as a
        heartbeat cannot reach it, so this is the cheap, local sign that the cluster is away."""
        coordinator = getattr(self.consumer, "_coordinator", None)
        return getattr(coordinator, "coordinator_id", None) is not None

    def _in_group(self) -> bool:
        """The consumer holds a generation (a lost membership resets it to -1 before the revocation)."""
        coordinator = getattr(self.consumer, "_coordinator", None)
        return int(getattr(coordinator, "generation", -1)) > 0

    async def rewind(self, what: str, exc: BaseException) -> None:
        """After a retriable Kafka error in a batch or a flush; the caller holds ``self.lock`` and
        must not have released it since the error (nothing may read the dropped attempt's state).

        Nothing of the attempt was committed unless its transactions were, so going back to the
        committed state is exact, whatever part of it reached Kafka: the in-memory state of every
        partition is dropped now; once the cluster answers, the partitions the group still gives
        this worker are taken back (``recover``: the processor re-acquires their producers, which
        bumps the epoch and aborts whatever the attempt left open, then re-reads their state) and
        the consumer is sought to the committed offsets. The replay guards make the replayed
        records land once (``streams/runtime/checkpoint.py``)."""
        self.rewinds += 1
        self.outage.failed(what, exc)
        self.release(self.held_partitions())
        delay = BACKOFF_FIRST_S
        while not self.should_stop:
            await asyncio.sleep(delay)
            try:
                await self._back_to_committed()
            except Exception as again:
                if not (retriable(again) or isinstance(again, TimeoutError)):
                    raise
                self.outage.failed("rewind", again)
                self.release(self.held_partitions())  # a partial recovery starts over
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            self.outage.recovered()
            return

    async def _back_to_committed(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        await self._renew_producer()
        assignment = consumer.assignment()
        if self._in_group():
            # Fence first, then read: state and offsets are read after any earlier transaction of
            # these partitions is aborted or committed. Without a generation the consumer is about
            # to rejoin, and the assignment callback takes the partitions then (perhaps elsewhere).
            await self.recover({tp.partition for tp in assignment})
        async with asyncio.timeout(COMMITTED_READ_S):
            committed = {tp: await consumer.committed(tp) for tp in assignment}
        for tp, offset in committed.items():
            if offset is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, offset)
        # Only the schema gate pauses partitions, and the release made it forget what it held: the
        # records are read again from the committed offsets and gated afresh.
        consumer.resume(*consumer.paused())

    async def _renew_producer(self) -> None:
        """A fresh outputs producer: the old one may have stopped for good (an idempotent producer
        whose records expired in the outage breaks its sequence), and whatever it still holds is the
        dropped attempt's, repeated by the replay anyway."""
        fresh = self._outputs_producer()
        try:
            await fresh.start()
        except BaseException:
            await fresh.stop()
            raise
        old, self.producer = self.producer, fresh
        if old is not None:
            self._closing.start(_stop_within(old, STOP_TIMEOUT_S, self.logger))

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
                    try:
                        # Records can arrive before the assignment callback has recovered their state.
                        await self.recover({tp.partition for tp in fetched})
                        with gc_policy.paused():
                            await self.process(fetched)
                    except Exception as exc:
                        if self.should_stop or not retriable(exc):
                            raise
                        # Still under the lock: the rewind drops the batch's in-memory effects first.
                        await self.rewind(f"{type(self).__name__} batch", exc)
            except Exception as exc:
                if self.should_stop:
                    # Shutting down under a batch (its producer or consumer already closing): it was
                    # not committed, so it is replayed on the next start. Not a crash.
                    self.logger.info("batch interrupted by shutdown; it will be replayed: %r", exc)
                    return
                self.die(f"{type(self).__name__} batch", exc)


async def _stop_within(producer: AIOKafkaProducer, timeout: float, logger: logging.Logger) -> None:
    try:
        async with asyncio.timeout(timeout):
            await producer.stop()
    except Exception as exc:  # a replaced producer: nothing it still held is wanted
        logger.debug("closing a replaced producer: %r", exc)
