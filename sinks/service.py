"""The ClickHouse sink: batched, idempotent inserts with offsets committed only after the batch is
stored.

Exactly once, by construction:
1. Before inserting a batch of partition P covering offsets [s, e], the sink records that plan in
   ``sink_batches`` (with the replay guard before and after it).
2. Every table insert of that batch carries ``insert_deduplication_token`` = group:topic:P:s-e:table,
   and dependent materialized views deduplicate too.
3. Only then is offset e+1 committed.
After a crash the consumer restarts at s; the sink finds the plan starting at s, re-forms exactly
[s, e] and re-inserts with the same tokens, so ClickHouse drops whatever had already landed.

It is a plain aiokafka consumer run as a Faust service rather than an agent because it needs what
agents hide: per-partition offset ranges, manual commits and pausing while ClickHouse is away.
"""

from __future__ import annotations

import asyncio
import hashlib
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
from sinks.routing import ROUTES, Route, dead_letter_rows
from streams.runtime.metrics import Metrics
from streams.settings import Settings
from streams.wire.codec import DecodeError, Decoder
from streams.wire.dead_letters import build_dead_letter

log = logging.getLogger("creditflow.sink")

_RETRY_MAX_S = 30.0
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
class _Partition:
    tp: TopicPartition
    route: Route
    records: list[Any] = field(default_factory=list)
    guard: int = -1
    # Set after a restart: the first batch must end exactly here to reproduce the recorded plan...
    replay_end: int | None = None
    # ... and be stored together with the other batches of its recorded store ('' = on its own).
    replay_store: str = ""
    first_at: float = 0.0


@dataclass
class _Piece:
    """One partition's share of a store: its records, and the replay guard before them."""

    part: _Partition
    records: Sequence[Any]
    guard_before: int


@dataclass
class _AvroInsert:
    """The usage-enriched batches of one store handed to ClickHouse as one Avro container file."""

    pieces: list[_Piece]
    token_prefix: str
    blob: bytes
    rows: int
    dropped: int


def store_id(batches: Sequence[tuple[str, int, int, int]]) -> str:
    """Name of a store of (topic, partition, start, end) batches: the same batches, the same name,
    whatever order they were gathered in."""
    return hashlib.sha256(repr(sorted(batches)).encode()).hexdigest()[:24]


@dataclass
class SinkStats:
    batches: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    dropped_replays: int = 0
    undecodable: int = 0
    retries: int = 0
    # Partition batches that went to ClickHouse as an Avro file, undecoded.
    direct_batches: int = 0


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: ClickHouseSink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # Uncommitted buffers are dropped: whoever gets the partition re-reads them from Kafka.
        for tp in revoked:
            self.sink.parts.pop(tp, None)
        gone = set(revoked)
        for store in [s for s, members in self.sink.replay_stores.items() if gone & members.keys()]:
            del self.sink.replay_stores[store]

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.sink.metrics.assigned(self.sink.group, assigned)
        try:
            await self.sink.restore(assigned)
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
        self.group = f"{settings.app_id}-sink"
        self.routes: dict[str, Route] = {names[r.topic_key]: r for r in ROUTES}
        self.decoders: dict[str, Decoder] = {}
        self.columns: dict[str, list[str]] = {}
        self.parts: dict[TopicPartition, _Partition] = {}
        self.stats = SinkStats()
        # The app's metrics once registered (streams/runtime/health.py watch_service); a private set before.
        self.metrics = Metrics()
        # One thread owns the ClickHouse client: chDB is one engine per process, and a blocking
        # insert must not stall the processor agents sharing this event loop.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self.consumer: AIOKafkaConsumer | None = None
        self._client: Any = None
        # Usage-enriched batches skip Python decoding when ClickHouse can read the sink's files:
        # chDB runs in this process. A server would need the file shipped in the request body.
        self.avro_direct = settings.resolved_clickhouse_url.startswith("chdb://")
        # With chDB this is the only sink, so a store may span every partition: one insert per table
        # per flush. Sinks of a ClickHouse server share partitions, and a store split by a rebalance
        # could not be re-formed, so there each partition batch is a store of its own.
        self.combine = self.avro_direct
        # Recorded stores being replayed after a restart: store -> {partition: end of its batch}.
        self.replay_stores: dict[str, dict[TopicPartition, int]] = {}
        self.containers = ContainerBuilder()
        self.spool_dir = ""

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
        for topic, route in self.routes.items():
            self.decoders[topic] = Decoder(route.schema, None)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.settings.sink_batch_rows,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            # While ClickHouse is away the loop stops polling on purpose; do not leave the group.
            max_poll_interval_ms=24 * 3600 * 1000,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
        )
        await self.consumer.start()
        self.consumer.subscribe(topics=list(self.routes), listener=_Listener(self))

    async def on_stop(self) -> None:
        if self.consumer is not None:
            try:
                await self._flush(force=True)
            except Exception:  # shutting down: replay will redo whatever did not land
                log.exception("final sink flush failed; the batch will be replayed")
            await self.consumer.stop()
        self.executor.shutdown(wait=True)
        if self.spool_dir:
            shutil.rmtree(self.spool_dir, ignore_errors=True)

    async def restore(self, assigned: Sequence[TopicPartition]) -> None:
        """Re-arm newly assigned partitions from the recorded plans: a batch planned at the committed
        offset is replayed exactly; otherwise the guard continues from the last stored batch."""
        assert self.consumer is not None
        if not assigned:
            return
        committed: dict[TopicPartition, int] = {}
        missing = []
        for tp in assigned:
            offset = await self.consumer.committed(tp)
            if offset is None:
                missing.append(tp)
            else:
                committed[tp] = offset
        if missing:
            committed.update(await self.consumer.beginning_offsets(missing))
        # One query for the whole assignment: a rebalance callback that dawdles gets the member
        # evicted from the group.
        rows = await self._plans(assigned, committed)
        stores: set[str] = set()
        for tp in assigned:
            part = _Partition(tp, self.routes[tp.topic])
            plan = rows.get(tp)
            if plan is not None:
                start, end, before, after, store = plan
                if start == committed[tp]:
                    part.replay_end, part.guard, part.replay_store = end, before, store
                    if store:
                        stores.add(store)
                else:
                    part.guard = after
            self.parts[tp] = part
        if stores:
            self.replay_stores.update(await self._store_members(stores))

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

    async def _plans(self, assigned: Sequence[TopicPartition], committed: Mapping[TopicPartition, int]
                     ) -> dict[TopicPartition, tuple[int, int, int, int, str]]:
        """The last recorded plan at or before the committed offset, per partition."""
        keys = [(tp.topic, tp.partition, committed[tp]) for tp in assigned]
        rows = await self.query(
            "SELECT b.topic, b.partition, argMax(b.start_offset, b.start_offset), "
            "argMax(b.end_offset, b.start_offset), argMax(b.guard_before, b.start_offset), "
            "argMax(b.guard_after, b.start_offset), argMax(b.store, b.start_offset) "
            "FROM sink_batches AS b FINAL "
            "INNER JOIN (SELECT k.1 AS topic, k.2 AS partition, k.3 AS committed "
            "            FROM (SELECT arrayJoin({keys:Array(Tuple(String, Int32, Int64))}) AS k)) AS c "
            "ON b.topic = c.topic AND b.partition = c.partition "
            "WHERE b.consumer_group = {g:String} AND b.start_offset <= c.committed "
            "GROUP BY b.topic, b.partition",
            {"g": self.group, "keys": keys},
        )
        return {TopicPartition(t, p): (s, e, b, a, st) for t, p, s, e, b, a, st in rows}

    async def _store_members(self, stores: set[str]) -> dict[str, dict[TopicPartition, int]]:
        """Every batch of the given recorded stores: store -> {partition: end offset}."""
        rows = await self.query(
            "SELECT store, topic, partition, end_offset FROM sink_batches FINAL "
            "WHERE consumer_group = {g:String} AND store IN {stores:Array(String)}",
            {"g": self.group, "stores": sorted(stores)},
        )
        out: dict[str, dict[TopicPartition, int]] = {}
        for store, topic, partition, end in rows:
            out.setdefault(store, {})[TopicPartition(topic, partition)] = end
        return out

    @Service.task
    async def _run(self) -> None:
        while self.consumer is None and not self.should_stop:
            await asyncio.sleep(0.05)
        assert self.consumer is not None
        consumer = self.consumer
        while not self.should_stop:
            batches = await consumer.getmany(timeout_ms=200, max_records=self.settings.sink_batch_rows)
            self.metrics.consumed(self.group, batches)
            now = time.monotonic()
            for tp, records in batches.items():
                part = self.parts.get(tp)
                if part is None:
                    # Never drop fetched records: that would skip them for good. Arm the partition
                    # now from its committed offset and recorded plan.
                    await self._restore_with_retry([tp])
                    part = self.parts[tp]
                if not part.records:
                    part.first_at = now
                part.records.extend(records)
            await self._flush(force=False)

    def _due(self, force: bool) -> list[_Partition]:
        """The partitions of the next store."""
        # A batch being replayed goes first, and only with exactly the batches it was stored with.
        for store, members in list(self.replay_stores.items()):
            parts = [self.parts.get(tp) for tp in members]
            if any(p is not None and p.replay_store != store for p in parts):
                # Only if offsets were moved by hand: the store cannot be re-formed.
                log.warning("recorded store %s cannot be re-formed; its batches are stored one by one", store)
                del self.replay_stores[store]
                for p in parts:
                    if p is not None and p.replay_store == store:
                        p.replay_store = ""
                continue
            if all(p is not None and p.records and p.records[-1].offset >= end
                   for p, end in zip(parts, members.values(), strict=True)):
                return [p for p in parts if p is not None]
        now = time.monotonic()
        waiting = [p for p in self.parts.values() if p.records and not p.replay_store]
        # A replayed batch whose plan was recorded on its own is stored on its own, under its token.
        replays = [p for p in waiting if p.replay_end is not None]
        ready = [p for p in replays if p.records[-1].offset >= p.replay_end]  # type: ignore[operator]
        if replays and self.combine:
            return ready[:1]
        normal = [p for p in waiting if p.replay_end is None]
        # When one partition is due, every partition with rows goes in the same store: a store's
        # cost is mostly per insert (parts, views), and partitions that come due a moment apart
        # would otherwise each pay it and queue behind each other.
        if force or sum(len(p.records) for p in normal) >= self.settings.sink_batch_rows or any(
                now - p.first_at >= self.settings.sink_flush_seconds for p in normal):
            return ready + normal
        return ready

    async def _flush(self, force: bool) -> None:
        # Each store takes records out of the buffers and nothing is fetched meanwhile, so this ends.
        while due := self._due(force):
            await self._store_due(due)

    async def _store_due(self, due: list[_Partition]) -> None:
        batches: list[tuple[_Partition, list[Any], list[Any]]] = []
        for part in due:
            if part.replay_end is not None:
                take = [r for r in part.records if r.offset <= part.replay_end]
                rest = [r for r in part.records if r.offset > part.replay_end]
            else:
                take, rest = part.records, []
            batches.append((part, take, rest))
        members = [(p.tp.topic, p.tp.partition, take[0].offset, take[-1].offset) for p, take, _ in batches]
        if self.combine and (len(due) > 1 or due[0].replay_store or due[0].replay_end is None):
            store = store_id(members)
            units = [[_Piece(p, take, p.guard) for p, take, _ in batches]]
            prefixes = [f"{self.group}:store:{store}"]
        else:
            store = ""
            units = [[_Piece(p, take, p.guard)] for p, take, _ in batches]
            prefixes = [f"{self.group}:{t}:{pt}:{s}-{e}" for t, pt, s, e in members]
        after_guard: dict[TopicPartition, int] = {}
        inserts: list[_Insert] = []
        direct: list[_AvroInsert] = []
        rows_per_piece: dict[TopicPartition, int] = {}
        for unit, prefix in zip(units, prefixes, strict=True):
            avro = self._avro_unit(unit, prefix)
            rows_by_table: dict[str, list[Mapping[str, Any]]] = {}
            for piece in unit:
                if avro is not None and piece.part.route.guarded:
                    block = avro[1][piece.part.tp]
                    after_guard[piece.part.tp], rows_per_piece[piece.part.tp] = block.guard_after, block.rows
                    continue
                rows, after_guard[piece.part.tp] = self._rows(piece.part, piece.records, piece.guard_before)
                rows_per_piece[piece.part.tp] = sum(len(v) for v in rows.values())
                for table, table_rows in rows.items():
                    rows_by_table.setdefault(table, []).extend(table_rows)
            if avro is not None:
                direct.append(avro[0])
            inserts.extend(self._column_inserts(rows_by_table, prefix))
        planned_at = time.time_ns() // 1_000_000
        plans = [(self.group, t, pt, s, e, p.guard, after_guard[p.tp], rows_per_piece[p.tp], planned_at, store)
                 for (t, pt, s, e), (p, _take, _rest) in zip(members, batches, strict=True)]
        commits = {p.tp: OffsetAndMetadata(e + 1, "") for (_t, _pt, _s, e), (p, _, _) in zip(members, batches,
                                                                                            strict=True)}
        for p, _take, rest in batches:
            p.records = rest
            p.first_at = time.monotonic()

        t0 = time.monotonic()
        await self._store(plans, inserts, direct)
        log.debug("stored %d partition batches, %d rows in %.3fs", len(due), sum(p[7] for p in plans),
                  time.monotonic() - t0)
        for part in due:
            part.guard = after_guard[part.tp]
            part.replay_end = None
            if part.replay_store:
                self.replay_stores.pop(part.replay_store, None)
                part.replay_store = ""
        assert self.consumer is not None
        try:
            await self.consumer.commit(commits)
            self.metrics.committed(self.group, commits)
        except Exception as exc:  # a rebalance took the partition: its new owner replays the same plan
            log.warning("offset commit failed after a stored batch (will be deduplicated): %r", exc)
        self.stats.batches += len(due)

    def _avro_unit(self, unit: Sequence[_Piece],
                   prefix: str) -> tuple[_AvroInsert, dict[TopicPartition, GuardedBlock]] | None:
        """The unit's usage-enriched pieces as one container file, or None when they must be decoded."""
        if not self.avro_direct:
            return None
        pieces = [piece for piece in unit if piece.part.route.guarded]
        if not pieces:
            return None
        blocks: dict[TopicPartition, GuardedBlock] = {}
        for piece in pieces:
            block = self.containers.guarded(piece.records, piece.guard_before)
            if block is None:
                return None
            blocks[piece.part.tp] = block
        blob = merged_container(list(blocks.values()))
        if blob is None:
            return None
        return (_AvroInsert(pieces, prefix, blob, sum(b.rows for b in blocks.values()),
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

    def _rows(self, part: _Partition, records: Sequence[Any],
              guard: int) -> tuple[dict[str, list[Mapping[str, Any]]], int]:
        decoder = self.decoders[part.tp.topic]
        route = part.route
        out: dict[str, list[Mapping[str, Any]]] = {t: [] for t, _ in route.tables}
        for rec in records:
            try:
                value = decoder.decode(rec.value)
            except DecodeError as exc:
                self.stats.undecodable += 1
                if route.dead_letters_here:
                    dead = build_dead_letter(rec.topic, rec.partition, rec.offset, rec.key, rec.value,
                                             list(rec.headers or ()), exc.kind, exc.message,
                                             rec.timestamp or 0)
                    out.setdefault("dead_letters", []).extend(dead_letter_rows(dead))
                else:
                    # The processor dead-letters the inputs it reads; our own outputs never get here.
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

    def _insert_direct(self, client: Any, item: _AvroInsert, counts: dict[str, int],
                       took: list[str]) -> list[_Insert]:
        """Insert one container file into events and credit_ledger. On a data error (ClickHouse
        could not read what fastavro can) the same batches go through the decoding path instead,
        under the same tokens, so whatever part already landed is not doubled."""
        if not item.rows:
            counts["replays dropped"] = counts.get("replays dropped", 0) + item.dropped
            return []
        first = item.pieces[0]
        path = write_spool(self.spool_dir, f"{first.part.tp.partition}-{first.records[0].offset}.avro", item.blob)
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
                rows, _ = self._rows(piece.part, piece.records, piece.guard_before)
                for table, table_rows in rows.items():
                    rows_by_table.setdefault(table, []).extend(table_rows)
            return self._column_inserts(rows_by_table, item.token_prefix)
        finally:
            os.unlink(path)
        counts["events"] = counts.get("events", 0) + item.rows
        counts["direct batches"] = counts.get("direct batches", 0) + len(item.pieces)
        counts["replays dropped"] = counts.get("replays dropped", 0) + item.dropped
        return []

    async def _store(self, plans: list[tuple[Any, ...]], inserts: list[_Insert],
                     direct: Sequence[_AvroInsert] = ()) -> None:
        def store() -> dict[str, int]:
            counts: dict[str, int] = {}
            client = self._client_sync()
            # Per-insert timings at debug: a store's cost is mostly per insert, and it sets latency.
            took: list[str] = []
            t = time.perf_counter()
            client.insert("sink_batches", plans, column_names=list(INSERT_COLUMNS["sink_batches"]))
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
            log.debug("store: %s", ", ".join(took))
            return counts

        delay = 0.5
        started = time.perf_counter()
        while True:
            try:
                counts = await self.ch(store)
                break
            except Exception as exc:
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
        self.metrics.sink_stored(counts, time.perf_counter() - started)
        self.stats.dropped_replays += counts.pop("replays dropped", 0)
        self.stats.direct_batches += counts.pop("direct batches", 0)
        for table, n in counts.items():
            self.stats.rows[table] = self.stats.rows.get(table, 0) + n


def register_sink(app: faust.App, settings: Settings, bootstrap: str, names: Mapping[str, str]) -> ClickHouseSink:
    from streams.runtime.health import watch_service

    sink = ClickHouseSink(settings, bootstrap, names, loop=None)
    watch_service(app, sink, ping=sink.ping)
    app.service(sink)  # type: ignore[arg-type]  # Faust accepts instances too, its stub says classes
    app.creditflow_sink = sink  # type: ignore[attr-defined]
    return sink
