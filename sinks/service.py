"""The ClickHouse sink: batched, idempotent inserts with offsets committed only after the batch is
stored.

This module is the I/O: it arms assigned partitions from Kafka's committed offsets and the plans
recorded in ``sink_batches``, buffers fetched records, and executes the stores that
``sinks.store_plan.StorePlanner`` decides (record the plans, insert every table under its
``insert_deduplication_token``, then commit). Why that is exactly once under crashes, stalls and
rebalances, and how a member that lost its partitions is fenced, is written down in
``sinks/store_plan.py`` and ``docs/exactly-once.md``.

It is a plain aiokafka consumer run as a Faust service rather than an agent because it needs what
agents hide: per-partition offset ranges, manual commits and pausing while ClickHouse is away.

Topics that platform services or operators write (``Route.registry_framed``) may carry
Confluent-framed records. With a schema registry configured they pass the processor's schema gate
(``streams/runtime/schema_gate.py``) before they are buffered: a record whose schema id is undecided
(the registry is unreachable) is not buffered, its partition is sought back to it and paused, so no
store takes it or anything after it and no commit passes it; the partition resumes once the id is
decided. Only a definitive "not found" makes such a record undecodable.

What the sink cannot decode of the inputs no processor reads goes to the ``dead-letters`` topic
before it is buffered (``sinks/dead_letter_out.py``), and reaches the table from there. The sink
reads committed records only, like the processor: an aborted transaction (a replay of dead letters
that died half-way) is never stored.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from mode import Service

from sinks.avro_container import LEDGER_FILE_STRUCTURE, ContainerBuilder, GuardedBlock, merged_container, write_spool
from sinks.client import connect, is_unavailable
from sinks.cluster_ddl import session_settings
from sinks.columns import CREDIT_LEDGER_COLUMNS, EVENTS_COLUMNS, INSERT_COLUMNS, dedup_settings
from sinks.dead_letter_out import SinkDeadLetters
from sinks.routing import ROUTES, Route
from sinks.store_plan import TP, Piece, RecordedBatch, Store, StorePlanner, Unit
from streams.runtime.kafka_clients import KafkaClients
from streams.runtime.metrics import Metrics
from streams.runtime.schema_gate import SchemaGate, registry_schemas
from streams.runtime.topics import DEAD_LETTERS
from streams.settings import Settings
from streams.wire.codec import DecodeError, Decoder, RegistryUnavailable

log = logging.getLogger("creditflow.sink")

_RETRY_MAX_S = 30.0
# After a stall, long enough for a heartbeat (every second) to learn whether the session survived.
_STALL_SETTLE_S = 3.0
# (table, column names, column-oriented data, deduplication token)
_Insert = tuple[str, list[str], list[list[Any]], str]

# Both statements read the container file the sink just wrote (chDB shares this process' files).
_EVENTS_FROM_FILE = (f"INSERT INTO events ({', '.join(EVENTS_COLUMNS)}) "
                     f"SELECT {', '.join(EVENTS_COLUMNS)} FROM file({{path:String}}, 'Avro')")
_LEDGER_FROM_FILE = (
    f"INSERT INTO credit_ledger ({', '.join(CREDIT_LEDGER_COLUMNS)}) "
    "SELECT event_id, occurred_at, account_id, d.grant_id, d.campaign, d.amount_micro, d.balance_after_micro, "
    f"policy_version FROM file({{path:String}}, 'Avro', '{LEDGER_FILE_STRUCTURE}') ARRAY JOIN debits AS d"
)


@dataclass
class _AvroInsert:
    """The usage-enriched batches of one store handed to ClickHouse as one Avro container file."""

    pieces: list[Piece]
    token_prefix: str
    blob: bytes
    rows: int
    dropped: int


class _Fenced(Exception):
    """The store's partitions were revoked (or this member stalled past its session): stop."""


@dataclass
class SinkStats:
    batches: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    dropped_replays: int = 0
    undecodable: int = 0
    retries: int = 0
    # Partition batches that went to ClickHouse as an Avro file, undecoded.
    direct_batches: int = 0
    # Stores abandoned, or not committed, because their partitions were revoked meanwhile.
    fenced_stores: int = 0


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: ClickHouseSink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # Uncommitted buffers are dropped and in-flight stores fenced: whoever gets the partition
        # re-reads them from Kafka and re-forms what was recorded.
        self.sink.planner.revoke(revoked)
        if self.sink.gate is not None:
            self.sink.gate.release(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.sink.metrics.assigned(self.sink.group, assigned)
        self.sink.planner.assign(assigned)
        try:
            await self.sink.restore([TopicPartition(*tp) for tp in self.sink.planner.unarmed()])
        except Exception as exc:
            # aiokafka would swallow this; the run loop re-arms any partition left unarmed.
            log.warning("restoring sink progress on assignment failed (%r); will retry lazily", exc)


class ClickHouseSink(Service):
    def __init__(self, settings: Settings, bootstrap: str, names: Mapping[str, str],
                 client_factory: Callable[[], Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Injectable so a test can take ClickHouse away and bring it back.
        self.client_factory = client_factory or (lambda: connect(settings.resolved_clickhouse_url,
                                                                 **session_settings(settings.clickhouse_cluster)))
        self.settings = settings
        self.bootstrap = bootstrap
        self.kafka = KafkaClients(settings, bootstrap)
        self.group = f"{settings.app_id}-sink"
        self.routes: dict[str, Route] = {names[r.topic_key]: r for r in ROUTES}
        self.dead_letters_topic = names[DEAD_LETTERS]
        self.dead_letters: SinkDeadLetters | None = None
        self.decoders: dict[str, Decoder] = {}
        # Registry schemas are fetched without blocking; records waiting for one hold their partition.
        self.schemas = registry_schemas(settings)
        self.gate = (SchemaGate(self.schemas, [t for t, r in self.routes.items() if r.registry_framed],
                                settings.registry_wait_seconds) if self.schemas is not None else None)
        self.columns: dict[str, list[str]] = {}
        self.stats = SinkStats()
        # The app's metrics once registered (streams/runtime/health.py watch_service); a private set before.
        self.metrics = Metrics()
        # One thread owns the ClickHouse client: chDB is one engine per process, and a blocking
        # insert must not stall the processor agents sharing this event loop. Restores query on
        # it too, so they see every plan of a store still in flight.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self.consumer: AIOKafkaConsumer | None = None
        self._client: Any = None
        # Usage-enriched batches skip Python decoding when ClickHouse can read the sink's files:
        # chDB runs in this process. A server would need the file shipped in the request body.
        self.avro_direct = settings.resolved_clickhouse_url.startswith("chdb://")
        # With chDB this is the only sink, so a store may span every partition: one insert per table
        # per flush. Sinks of a ClickHouse server share partitions, and a store split by a rebalance
        # could not be re-formed, so there each partition batch is a store of its own.
        self.planner = StorePlanner(self.group, combine=self.avro_direct, batch_rows=settings.sink_batch_rows,
                                    flush_seconds=settings.sink_flush_seconds)
        self.containers = ContainerBuilder()
        self.spool_dir = ""
        # Last time the event loop ran; the ClickHouse thread reads it to notice a stall (SIGSTOP,
        # a VM freeze) longer than the session before it inserts anything more.
        self._loop_alive_at = time.monotonic()
        self._restoring = asyncio.Lock()

    @property
    def combine(self) -> bool:
        return self.planner.combine

    async def ch(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    def _client_sync(self) -> Any:
        if self._client is None:
            self._client = self.client_factory()
        return self._client

    async def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a read query on the sink's own ClickHouse client (the one chDB session)."""

        def run() -> list[tuple[Any, ...]]:
            return list(self._client_sync().query(sql, parameters=parameters).result_rows)

        result: list[tuple[Any, ...]] = await self.ch(run)
        return result

    async def ping(self) -> bool:
        """Whether ClickHouse answers, asked on the sink's own client (readiness)."""
        return bool(await self.ch(lambda: self._client_sync().ping()))

    async def on_start(self) -> None:
        self.columns = {table: list(cols) for table, cols in INSERT_COLUMNS.items()}
        if self.avro_direct:
            self.spool_dir = tempfile.mkdtemp(prefix="creditflow-sink-")
        await self.ch(self._client_sync)
        self.make_decoders()
        producer = self.kafka.producer(acks="all", enable_idempotence=True)
        await producer.start()
        self.dead_letters = SinkDeadLetters(producer, self.dead_letters_topic, self.routes, self.decoders,
                                            self.metrics.dead_lettered)
        self.consumer = AIOKafkaConsumer(
            **self.kafka.common(),
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # What a transaction aborted (a dead-letter replay that died) is not input: the processor
            # never applied it, so the sink must not store it either.
            isolation_level="read_committed",
            max_poll_records=self.settings.sink_batch_rows,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            # While ClickHouse is away the loop stops polling on purpose; do not leave the group.
            max_poll_interval_ms=24 * 3600 * 1000,
            **self.kafka.group_member("sink"),
        )
        await self.consumer.start()
        self.consumer.subscribe(topics=list(self.routes), listener=_Listener(self))

    def make_decoders(self) -> None:
        for topic, route in self.routes.items():
            # Only gated topics read registry schemas: an ungated Confluent record (creditflow never
            # writes one) must not meet an undecided id at decode time.
            self.decoders[topic] = Decoder(route.schema, self.schemas if route.registry_framed else None)

    async def on_stop(self) -> None:
        if self.consumer is not None:
            try:
                await self._flush(force=True)
            except Exception:  # shutting down: replay will redo whatever did not land
                log.exception("final sink flush failed; the batch will be replayed")
            await self.consumer.stop()
        if self.dead_letters is not None:
            await self.dead_letters.producer.stop()
        if self.schemas is not None:
            await self.schemas.close()
        self.executor.shutdown(wait=True)
        if self.spool_dir:
            shutil.rmtree(self.spool_dir, ignore_errors=True)

    # -- arming partitions from Kafka's committed offsets and the recorded plans -------------------

    async def restore(self, tps: Sequence[TopicPartition]) -> None:
        """Arm assigned partitions: committed offset, the guard of the last recorded batch before
        it, and the chain of recorded batches at or after it (see sinks/store_plan.py)."""
        # One restore at a time (the rebalance callback and the run loop may both ask), and a
        # partition armed already is left alone: re-arming it would drop what it has buffered,
        # records the consumer will not fetch again.
        async with self._restoring:
            await self._restore([tp for tp in tps if (tp.topic, tp.partition) not in self.planner.parts])

    async def _restore(self, tps: Sequence[TopicPartition]) -> None:
        assert self.consumer is not None
        if not tps:
            return
        epoch = self.planner.epoch
        committed = {(tp.topic, tp.partition): offset for tp, offset in (await self._committed(tps)).items()}
        # Few queries for the whole assignment: a rebalance callback that dawdles gets the member
        # evicted from the group.
        before, pending = await self._plans(committed)
        stores = {b.store for batches in pending.values() for b in batches if b.store}
        if stores:
            members = await self._store_members(stores)
            others = {b.tp for batches in members.values() for b in batches} - committed.keys()
            member_committed = dict(committed)
            if others:
                member_committed.update({(tp.topic, tp.partition): offset for tp, offset in (
                    await self._committed([TopicPartition(*tp) for tp in sorted(others)])).items()})
            self.planner.learn_stores(members, member_committed)
        if self.planner.epoch != epoch:
            log.info("sink restore of %d partitions superseded by another rebalance", len(tps))
            return  # another rebalance meanwhile: its assignment arms afresh
        log.info("sink arming %d partitions (epoch %d); %d recorded stores pending, %d landed",
                 len(committed), epoch, len(stores), len(stores & self.planner.landed))
        for tp in sorted(committed):
            if tp in self.planner.parts or tp not in self.planner.assigned:
                continue
            if not self.planner.arm(tp, committed[tp], before.get(tp), pending.get(tp, [])):
                log.warning("recorded sink batches of %s[%d] do not start at its committed offset %d "
                            "(offsets moved by hand?): they are not replayed", tp[0], tp[1], committed[tp])

    async def _committed(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        assert self.consumer is not None
        out: dict[TopicPartition, int] = {}
        missing = []
        for tp in tps:
            offset = await self.consumer.committed(tp)
            if offset is None:
                missing.append(tp)
            else:
                out[tp] = offset
        if missing:
            out.update(await self.consumer.beginning_offsets(missing))
        return out

    async def _restore_with_retry(self, tps: Sequence[TopicPartition]) -> None:
        delay = 0.2
        while True:
            try:
                await self.restore(tps)
                self.metrics.sink_recovered()
                return
            except Exception as exc:
                if self.should_stop:
                    raise
                self.metrics.sink_failed(exc)
                log.warning("restoring sink progress failed (%r); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)

    async def _plans(self, committed: Mapping[TP, int]
                     ) -> tuple[dict[TP, RecordedBatch], dict[TP, list[RecordedBatch]]]:
        """Per partition: the last recorded batch ending before the committed offset, and every
        recorded batch ending at or after it."""
        keys = [(t, p, c) for (t, p), c in committed.items()]
        join = ("FROM sink_batches AS b FINAL "
                "INNER JOIN (SELECT k.1 AS topic, k.2 AS partition, k.3 AS committed "
                "            FROM (SELECT arrayJoin({keys:Array(Tuple(String, Int32, Int64))}) AS k)) AS c "
                "ON b.topic = c.topic AND b.partition = c.partition WHERE b.consumer_group = {g:String} ")
        params = {"g": self.group, "keys": keys}
        last = await self.query(
            "SELECT b.topic, b.partition, argMax(b.start_offset, b.start_offset), "
            "argMax(b.end_offset, b.start_offset), argMax(b.guard_before, b.start_offset), "
            "argMax(b.guard_after, b.start_offset), argMax(b.store, b.start_offset), "
            "argMax(b.landed, b.start_offset) "
            + join + "AND b.end_offset < c.committed GROUP BY b.topic, b.partition", params)
        chained = await self.query(
            "SELECT b.topic, b.partition, b.start_offset, b.end_offset, b.guard_before, b.guard_after, b.store, "
            "b.landed " + join + "AND b.end_offset >= c.committed ORDER BY b.topic, b.partition, b.start_offset",
            params)
        before = {(t, p): RecordedBatch(t, p, s, e, gb, ga, st, bool(ld)) for t, p, s, e, gb, ga, st, ld in last}
        pending: dict[TP, list[RecordedBatch]] = {}
        for t, p, s, e, gb, ga, st, ld in chained:
            pending.setdefault((t, p), []).append(RecordedBatch(t, p, s, e, gb, ga, st, bool(ld)))
        return before, pending

    async def _store_members(self, stores: set[str]) -> dict[str, list[RecordedBatch]]:
        """Every recorded batch of the given stores."""
        rows = await self.query(
            "SELECT store, topic, partition, start_offset, end_offset, guard_before, guard_after, landed "
            "FROM sink_batches FINAL WHERE consumer_group = {g:String} AND store IN {stores:Array(String)}",
            {"g": self.group, "stores": sorted(stores)},
        )
        out: dict[str, list[RecordedBatch]] = {}
        for store, t, p, s, e, gb, ga, ld in rows:
            out.setdefault(store, []).append(RecordedBatch(t, p, s, e, gb, ga, store, bool(ld)))
        return out

    # -- the loop ------------------------------------------------------------------------------

    @Service.task
    async def _tick(self) -> None:
        while not self.should_stop:
            self._loop_alive_at = time.monotonic()
            await asyncio.sleep(0.25)

    @Service.task
    async def _run(self) -> None:
        while self.consumer is None and not self.should_stop:
            await asyncio.sleep(0.05)
        assert self.consumer is not None
        consumer = self.consumer
        while not self.should_stop:
            batches = await consumer.getmany(timeout_ms=200, max_records=self.settings.sink_batch_rows)
            if self.gate is not None and batches:
                # Records waiting for a registry schema are cut here: never buffered, so never stored
                # or committed. A rebalance while the gate waited makes the whole fetch stale.
                batches = await self.gate.admit(consumer, batches,
                                                current=functools.partial(self._in_epoch, self.planner.epoch))
            if batches and self.dead_letters is not None and not await self.dead_letters.publish(
                    batches, functools.partial(self._in_epoch, self.planner.epoch)):
                continue  # a rebalance while Kafka was away: the fetch is stale, read again
            self.metrics.consumed(self.group, batches)
            now = time.monotonic()
            for tp, records in batches.items():
                if self.planner.add(tp, records, now):
                    continue
                if tp in consumer.assignment():
                    # Assigned but not armed (its restore failed): arm every such partition now.
                    await self._restore_with_retry([TopicPartition(*t) for t in self.planner.unarmed()] or [tp])
                    if self.planner.add(tp, records, time.monotonic()):
                        continue
                    if tp in consumer.assignment():
                        # Never skip fetched records of a partition we still own: read them again.
                        log.info("records of %s[%d] arrived before it was armed: fetching them again",
                                 tp.topic, tp.partition)
                        consumer.seek(tp, records[0].offset)
                # Otherwise revoked meanwhile: its owner reads them from the committed offset.
            await self._flush(force=False)

    def _in_epoch(self, epoch: int) -> bool:
        return self.planner.epoch == epoch

    @Service.task
    async def _resume_held(self) -> None:
        """Resume partitions held for registry schemas as soon as their ids are decided."""
        while not self.should_stop:
            await asyncio.sleep(0.2)
            if self.gate is not None and self.consumer is not None and self.gate.held:
                self.gate.resume_ready(self.consumer)

    async def _flush(self, force: bool) -> None:
        # Each store takes records out of the buffers and nothing is fetched meanwhile, so this ends.
        while (store := self.planner.next_store(time.monotonic(), force)) is not None:
            await self._execute(store)
        if self.planner.skipped:
            await self._commit_skipped()

    async def _commit_skipped(self) -> None:
        """Commit past landed batches skipped on arming (stores that landed but whose own commit
        was fenced): our partitions, this epoch, nothing to insert."""
        assert self.consumer is not None
        epoch, member = self.planner.epoch, self._membership()
        owed = self.planner.take_skipped()
        try:
            self._fence(epoch, member)
            if not member[2]:
                raise _Fenced("coordinator unknown")
            offsets = {TopicPartition(*tp): OffsetAndMetadata(o, "") for tp, o in owed.items()}
            await self.consumer.commit(offsets)
            self.metrics.committed(self.group, offsets)
        except Exception as exc:  # the next owner skips them again
            log.warning("committing past %d landed sink batches failed: %r", len(owed), exc)

    async def _execute(self, store: Store) -> None:
        """Build the store's rows, record its plans, insert, and commit: unless fenced."""
        member = self._membership()
        after_guard: dict[TP, int] = {}
        rows_per_piece: dict[TP, int] = {}
        inserts: list[_Insert] = []
        direct: list[_AvroInsert] = []
        for unit in store.units:
            avro = self._avro_unit(unit)
            rows_by_table: dict[str, list[Mapping[str, Any]]] = {}
            for piece in unit.pieces:
                if avro is not None and self.routes[piece.tp[0]].guarded:
                    block = avro[1][piece.tp]
                    after_guard[piece.tp], rows_per_piece[piece.tp] = block.guard_after, block.rows
                    continue
                rows, after_guard[piece.tp] = self._rows(piece.tp[0], piece.records, piece.guard_before)
                rows_per_piece[piece.tp] = sum(len(v) for v in rows.values())
                for table, table_rows in rows.items():
                    rows_by_table.setdefault(table, []).extend(table_rows)
            if avro is not None:
                direct.append(avro[0])
            inserts.extend(self._column_inserts(rows_by_table, unit.token_prefix))
        planned_at = time.time_ns() // 1_000_000
        plans = store.plan_rows(self.group, after_guard, rows_per_piece, planned_at)
        landed = store.plan_rows(self.group, after_guard, rows_per_piece, planned_at, landed=True)

        t0 = time.monotonic()
        if not await self._store(store.epoch, member, plans, landed, inserts, direct):
            self.stats.fenced_stores += 1
            log.warning("sink store of %d batches abandoned: its partitions were revoked", len(plans))
            return
        log.debug("stored %d partition batches, %d rows in %.3fs", len(plans), sum(p[7] for p in plans),
                  time.monotonic() - t0)
        self.planner.stored(store, after_guard)
        self.stats.batches += len(plans)
        assert self.consumer is not None
        try:
            # Checked in the same loop step as the commit reads the generation it sends: a commit
            # of a fenced store could land after the new owner read the committed offset.
            self._fence(store.epoch, member)
            if not self._membership()[2]:
                raise _Fenced("coordinator unknown")
        except _Fenced as exc:
            # The partitions' next owner (perhaps this sink, re-armed) skips or re-forms this store.
            self.stats.fenced_stores += 1
            log.warning("sink store of %d batches stored but not committed (%s)", len(plans), exc)
            return
        commits = {TopicPartition(*tp): OffsetAndMetadata(offset, "") for tp, offset in store.commits().items()}
        try:
            await self.consumer.commit(commits)
            self.metrics.committed(self.group, commits)
        except Exception as exc:  # a rebalance took the partition: its new owner replays the same plan
            log.warning("offset commit failed after a stored batch (will be deduplicated): %r", exc)

    def _avro_unit(self, unit: Unit) -> tuple[_AvroInsert, dict[TP, GuardedBlock]] | None:
        """The unit's usage-enriched pieces as one container file, or None when they must be decoded."""
        if not self.avro_direct:
            return None
        pieces = [piece for piece in unit.pieces if self.routes[piece.tp[0]].guarded]
        if not pieces:
            return None
        blocks: dict[TP, GuardedBlock] = {}
        for piece in pieces:
            block = self.containers.guarded(piece.records, piece.guard_before)
            if block is None:
                return None
            blocks[piece.tp] = block
        blob = merged_container(list(blocks.values()))
        if blob is None:
            return None
        return (_AvroInsert(pieces, unit.token_prefix, blob, sum(b.rows for b in blocks.values()),
                            sum(b.dropped for b in blocks.values())), blocks)

    def _column_inserts(self, rows_by_table: Mapping[str, list[Mapping[str, Any]]], token_prefix: str) -> list[_Insert]:
        inserts: list[_Insert] = []
        for table, rows in rows_by_table.items():
            if not rows:
                continue
            cols = self.columns[table]
            data = [[row.get(c) for row in rows] for c in cols]
            inserts.append((table, cols, data, f"{token_prefix}:{table}"))
        return inserts

    def _rows(self, topic: str, records: Sequence[Any], guard: int) -> tuple[dict[str, list[Mapping[str, Any]]], int]:
        decoder = self.decoders[topic]
        route = self.routes[topic]
        out: dict[str, list[Mapping[str, Any]]] = {t: [] for t, _ in route.tables}
        for rec in records:
            try:
                value = decoder.decode(rec.value)
            except RegistryUnavailable:
                # The gate decided every id before the record was buffered, so this cannot be an
                # outage; never dead-letter a record that may yet decode. Nothing of this store is
                # recorded yet: failing here replays it from the committed offset.
                raise
            except DecodeError as exc:
                self.stats.undecodable += 1
                # Inputs no processor reads were published as dead letters before they were buffered
                # (sinks/dead_letter_out.py); the processor dead-letters the inputs it reads, and our
                # own outputs never get here.
                if not route.dead_letters_here:
                    log.warning("undecodable record %s[%d]@%d: %s", rec.topic, rec.partition, rec.offset, exc)
                continue
            if route.guarded:
                if value["source_offset"] <= guard:
                    self.stats.dropped_replays += 1
                    continue
                guard = value["source_offset"]
            for table, make in route.tables:
                out[table].extend(make(value))
        return out, guard

    def _membership(self) -> tuple[int, str, bool]:
        """(generation, member id, coordinator known) of the sink's group membership as the consumer
        holds it right now. aiokafka does not publish these; its group coordinator keeps them, and
        a commit sends exactly these values, read in the same loop step as this check."""
        coordinator = getattr(self.consumer, "_coordinator", None)
        return (getattr(coordinator, "generation", -1), getattr(coordinator, "member_id", ""),
                getattr(coordinator, "coordinator_id", None) is not None)

    def _fence(self, epoch: int, member: tuple[int, str, bool]) -> None:
        """Raise _Fenced unless this sink still owns what it planned in ``epoch`` as ``member``:
        no revocation since, the same generation (a lost session resets it before the revocation
        callback runs) and no stall past the session timeout that the heartbeat has not judged yet.
        Called on the ClickHouse thread before a store's plans are recorded and after its inserts,
        and on the loop before the commit."""
        if self.planner.epoch != epoch:
            raise _Fenced("partitions revoked")
        generation, member_id, _ = self._membership()
        if generation < 0 or (generation, member_id) != member[:2]:
            raise _Fenced("group membership lost")
        if time.monotonic() - self._loop_alive_at > self.settings.kafka_session_timeout_ms / 1000:
            raise _Fenced("stalled past the session timeout")

    def _insert_direct(self, client: Any, item: _AvroInsert, counts: dict[str, int],
                       took: list[str]) -> list[_Insert]:
        """Insert one container file into events and credit_ledger. On a data error (ClickHouse
        could not read what fastavro can) the same batches go through the decoding path instead,
        under the same tokens, so whatever part already landed is not doubled."""
        if not item.rows:
            counts["replays dropped"] = counts.get("replays dropped", 0) + item.dropped
            return []
        first = item.pieces[0]
        path = write_spool(self.spool_dir, f"{first.tp[1]}-{first.start}.avro", item.blob)
        try:
            for sql, table in ((_EVENTS_FROM_FILE, "events"), (_LEDGER_FROM_FILE, "credit_ledger")):
                t = time.perf_counter()
                client.command(sql, parameters={"path": path},
                               settings=dedup_settings(f"{item.token_prefix}:{table}"))
                took.append(f"{table} {item.rows} events from Avro {1e3 * (time.perf_counter() - t):.0f} ms")
        except Exception as exc:
            if is_unavailable(exc):
                raise
            log.warning("ClickHouse could not read the Avro batch %s (%r); decoding it in Python instead",
                        item.token_prefix, exc)
            rows_by_table: dict[str, list[Mapping[str, Any]]] = {}
            for piece in item.pieces:
                rows, _ = self._rows(piece.tp[0], piece.records, piece.guard_before)
                for table, table_rows in rows.items():
                    rows_by_table.setdefault(table, []).extend(table_rows)
            return self._column_inserts(rows_by_table, item.token_prefix)
        finally:
            os.unlink(path)
        counts["events"] = counts.get("events", 0) + item.rows
        counts["direct batches"] = counts.get("direct batches", 0) + len(item.pieces)
        counts["replays dropped"] = counts.get("replays dropped", 0) + item.dropped
        return []

    async def _store(self, epoch: int, member: tuple[int, str, bool], plans: list[tuple[Any, ...]],
                     landed: list[tuple[Any, ...]], inserts: list[_Insert],
                     direct: Sequence[_AvroInsert] = ()) -> bool:
        """Record the plans, then insert; retried until ClickHouse takes it. False when fenced
        before the plans were recorded. Once they are, the store is completed even if fenced
        meanwhile (the same blocks under the same tokens: idempotent), and then marked landed, so
        whoever re-arms its partitions skips it rather than re-forming it."""
        recorded = False

        def fence() -> None:
            self._fence(epoch, member)

        def store() -> dict[str, int]:
            counts: dict[str, int] = {}
            client = self._client_sync()
            # Per-insert timings at debug: a store's cost is mostly per insert, and it sets latency.
            took: list[str] = []
            nonlocal recorded
            if not recorded:
                fence()
            t = time.perf_counter()
            client.insert("sink_batches", plans, column_names=list(INSERT_COLUMNS["sink_batches"]))
            recorded = True
            took.append(f"plans {1e3 * (time.perf_counter() - t):.0f} ms")
            fallback = [ins for item in direct for ins in self._insert_direct(client, item, counts, took)]
            for table, cols, data, token in [*inserts, *fallback]:
                t = time.perf_counter()
                client.insert(
                    table, data, column_names=cols, column_oriented=True,
                    settings=dedup_settings(token),
                )
                rows = len(data[0]) if data else 0
                took.append(f"{table} {rows} rows {1e3 * (time.perf_counter() - t):.0f} ms")
                counts[table] = counts.get(table, 0) + rows
            try:
                fence()
            except _Fenced:
                client.insert("sink_batches", landed, column_names=list(INSERT_COLUMNS["sink_batches"]))
                counts["landed marks"] = 1
            log.debug("store: %s", ", ".join(took))
            return counts

        delay = 0.5
        started = time.perf_counter()
        while True:
            try:
                counts = await self.ch(store)
                break
            except _Fenced as exc:
                if self.planner.epoch != epoch or self.should_stop:
                    return False
                # A stall or a lost session: let the consumer's heartbeat find out whether the
                # session survived (a lost one revokes the partitions, changing the epoch).
                log.warning("sink store paused (%s); re-checking the group membership", exc)
                await asyncio.sleep(_STALL_SETTLE_S)
                continue
            except Exception as exc:
                if not recorded and self.planner.epoch != epoch:
                    return False
                # ClickHouse is away or refused the batch: keep the batch, do not commit, do not poll
                # (so memory stays bounded), and try again with backoff until it comes back.
                self.stats.retries += 1
                self.metrics.sink_failed(exc)
                log.warning("ClickHouse insert failed (%r); retrying in %.1fs", exc, delay)
                if self.should_stop:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
                self._client = None
        counts.pop("landed marks", None)  # counted with the fenced commit
        self.metrics.sink_stored(counts, time.perf_counter() - started)
        self.stats.dropped_replays += counts.pop("replays dropped", 0)
        self.stats.direct_batches += counts.pop("direct batches", 0)
        for table, n in counts.items():
            self.stats.rows[table] = self.stats.rows.get(table, 0) + n
        return True


def register_sink(app: faust.App, settings: Settings, bootstrap: str, names: Mapping[str, str]) -> ClickHouseSink:
    from streams.runtime.health import watch_service

    sink = ClickHouseSink(settings, bootstrap, names, loop=None)
    watch_service(app, sink, ping=sink.ping)
    app.service(sink)  # type: ignore[arg-type]  # Faust accepts instances too, its stub says classes
    app.creditflow_sink = sink  # type: ignore[attr-defined]
    return sink
