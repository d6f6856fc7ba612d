"""Per-account state that survives crashes and moves with its partition: a dict in memory, backed
by a compacted Kafka changelog topic, recovered when a partition is assigned.

A Faust table does the same per message; this one lets the processor write state in batches, await
its delivery before committing input offsets, and recover exactly the partitions that the
processor's own consumer group assigned (see ``streams/processor.py`` for why).

Memory: a decoded state costs several times its JSON (an account's detector state is ~8 KB of
dicts and lists, ~1.2 KB of JSON), and even as bytes every key held in a Python dict costs
~150-200 B of objects (slot, str, bytes header) before its value: with millions of keys over five
tables that alone is about a gigabyte. So only a bounded set of recently written or read keys is
kept decoded ("hot", ``hot_max``), and every other key lives in a local RocksDB store as its last
changelog write, read back and decoded when ``get`` asks for it - what Faust and Kafka Streams do.
The changelog stays the source of truth: the local store is scratch, created empty with the table,
deleted by ``close`` (or at interpreter exit), and rebuilt from the changelog by ``recover``.
A worker killed before it could delete its stores leaves ``creditflow-state-<pid>-*`` directories;
the next table created in the same directory removes those whose process is gone.

Values are written as JSON unless the table is given another ``codec`` (``ValueCodec``: encode to
the changelog record's value, decode it back, including what earlier versions wrote): the account
usage table stores typed ``AccountUsage`` records as MessagePack (``streams/credits/account_state.py``).
The local store keeps the changelog value as it is, so recovery copies bytes and decodes nothing.

Callers may change an object returned by ``get`` in place, but must write it with ``put_many``
before the batch ends: a key leaves the hot set only at a safe point (``evict``, run by
``put_many`` and at the end of ``Checkpoint.write``), where its stored bytes equal its last
write. A new key that is not written yet is added with ``set`` and is never evicted before its write.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import weakref
from collections.abc import Awaitable, Iterable, Iterator, Set
from typing import Any, Protocol, TypeVar, cast

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rocksdict import (
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    Options,
    Rdict,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

from streams.runtime.batch_send import Outgoing, send_partitioned
from streams.runtime.kafka_clients import KafkaClients, clients_for
from streams.runtime.topics import create_topic
from streams.settings import Settings

log = logging.getLogger("creditflow.tables")

_V = TypeVar("_V")

# A stored entry is a 3-byte header and a payload. Header byte 0 is the format (0 = the changelog
# record's value as the table's codec wrote it; kept so another local encoding can be told apart),
# bytes 1-2 the partition: ``drop`` finds a revoked partition's keys from the entries alone, with no
# second index per key.
_RAW = 0
_HEADER = 3
_MAX_PARTITIONS = 1 << 16

_DIR_PREFIX = "creditflow-state-"
_DIR_PID = re.compile(re.escape(_DIR_PREFIX) + r"(\d+)-")
# Recovery reads whole partitions: records are written in batches, one RocksDB write per this many.
_RESTORE_BATCH = 10_000

# RocksDB memory, bounded whatever the number of keys (see ``_options``). Memtables hold values
# uncompressed until flushed; one manager caps them over every table of the process, so the process
# stays under its 1 GiB bar with 1M accounts (figures in docs/performance.md).
_WRITE_BUFFER = 8 << 20
_WRITE_BUFFERS = 2
_WRITE_BUFFERS_TOTAL = 32 << 20
# Hot values are decoded in ``_hot``; the block cache only saves re-reading a block from the page
# cache (the files stay in the OS page cache, which is not this process's RSS).
_BLOCK_CACHE = 16 << 20
_BLOOM_BITS = 10  # a get of a key never written (new accounts, fingerprints) skips every file

DEFAULT_HOT_KEYS: int = Settings.model_fields["state_hot_keys"].default


def encode_json(value: Any) -> bytes:
    # orjson: state JSON is written for every touched key of every batch, ~4x faster than json.
    # Non-string keys become strings, as json.dumps does.
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits: the stdlib writes any size
        return json.dumps(value, separators=(",", ":")).encode()


# orjson reads an integer beyond 64 bits as a float, silently. Such values (written by the stdlib
# fallback of ``encode_json``) are rare: only payloads with a run of 20+ digits (an id of digits may be
# one) take the stdlib path, which reads every JSON number exactly.
_LONG_DIGITS = re.compile(rb"\d{20,}")


def decode_json(payload: bytes | memoryview) -> Any:
    return json.loads(bytes(payload)) if _LONG_DIGITS.search(payload) else orjson.loads(payload)


class ValueCodec(Protocol):
    """How a table's values become changelog record values and back. ``decode`` must read every
    encoding the table's changelog may hold, including those written by earlier versions (a
    compacted changelog keeps an account's last record for as long as the account lives)."""

    def encode(self, value: Any, /) -> bytes: ...
    def decode(self, payload: bytes | memoryview, /) -> Any: ...


class JsonCodec:
    """The default: JSON-able values (dicts, lists, numbers, strings), as JSON."""

    encode = staticmethod(encode_json)
    decode = staticmethod(decode_json)


JSON_CODEC = JsonCodec()


def _raw_header(partition: int) -> bytes:
    return bytes((_RAW, partition >> 8, partition & 0xFF))


def _partition_of(stored: bytes) -> int:
    return (stored[1] << 8) | stored[2]


@functools.cache
def _shared_memory() -> tuple[Cache, WriteBufferManager]:
    """One block cache and one memtable budget for every table of the process, so RocksDB's
    memory does not grow with the number of tables."""
    cache = Cache(_BLOCK_CACHE)
    return cache, WriteBufferManager(_WRITE_BUFFERS_TOTAL, False)


def _options() -> Options:
    cache, buffers = _shared_memory()
    opt = Options(raw_mode=True)
    opt.create_if_missing(True)
    opt.set_write_buffer_size(_WRITE_BUFFER)
    opt.set_max_write_buffer_number(_WRITE_BUFFERS)
    opt.set_write_buffer_manager(buffers)
    # Flushes and compactions run beside the event loop on a 2-core machine: one at a time.
    opt.set_max_background_jobs(1)
    # lz4 keeps detector accounts in ~1/2.7 of the disk and page cache; the CPU it costs was lost in
    # the noise of the in-process processor harness (200k accounts: 50-54 s with it, 54 s without).
    opt.set_compression_type(DBCompressionType.lz4())
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    table.set_bloom_filter(_BLOOM_BITS, False)
    opt.set_block_based_table_factory(table)
    opt.set_keep_log_file_num(1)
    opt.set_max_log_file_size(1 << 20)
    return opt


def _write_options() -> WriteOptions:
    wo = WriteOptions()
    # No write-ahead log: the store is scratch (rebuilt from the changelog after any restart), so
    # logging every write to disk would only cost. The stub declares it a method; it is a property.
    setattr(wo, "disable_wal", True)  # noqa: B010
    return wo


def _remove_dead_siblings(base: str) -> None:
    """Remove the state directories in ``base`` of processes that no longer run (killed before
    they could close their tables)."""
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    me = os.getpid()
    for entry in entries:
        m = _DIR_PID.match(entry.name)
        if m is None or int(m.group(1)) == me or not entry.is_dir(follow_symlinks=False):
            continue
        if not _in_use(entry.path, int(m.group(1))):
            shutil.rmtree(entry.path, ignore_errors=True)


def _in_use(path: str, pid: int) -> bool:
    """Whether a process has the store in ``path`` open. RocksDB holds a POSIX lock on its LOCK
    file while open, which also answers for a directory shared by containers whose pids differ;
    before the store exists (or without a LOCK file) the owner's pid is asked."""
    try:
        fd = os.open(os.path.join(path, "LOCK"), os.O_RDWR)
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except (OSError, OverflowError):  # alive under another user, or not a pid we can ask about
            return True
        return True
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also releases the probe's own lock
    return False


def _stored_keys(db: Rdict) -> Iterator[bytes]:
    return cast(Iterator[bytes], db.keys())  # raw mode: keys are bytes


def _stored_items(db: Rdict) -> Iterator[tuple[bytes, bytes]]:
    return cast(Iterator[tuple[bytes, bytes]], db.items())


def _close_store(db: Rdict, path: str) -> None:
    try:
        db.close()
    finally:
        shutil.rmtree(path, ignore_errors=True)


class ChangelogTable:
    def __init__(self, name: str, topic: str, partitions: int, hot_max: int = DEFAULT_HOT_KEYS,
                 *, state_dir: str | None = None, codec: ValueCodec = JSON_CODEC,
                 marker: bytes | None = None) -> None:
        """``state_dir``: where the local store's directory is made; None = the system temp dir.
        ``codec``: how values are written to the changelog (and the local store) and read back.
        ``marker``: recovery notes, per partition, the keys whose recovered value (as the codec
        wrote it) contains these bytes (``marked``), so an owner can index a few keys without
        reading every value back."""
        if not 0 < partitions <= _MAX_PARTITIONS:
            raise ValueError(f"{name}: {partitions} partitions; at most {_MAX_PARTITIONS} are supported")
        self.name = name
        self.codec = codec
        self.topic = topic
        self.partitions = partitions
        self.hot_max = hot_max
        # Decoded values, oldest first by their last write or decode; reads do not reorder, so
        # ``get`` costs one lookup like a plain dict. Keys are interned so the tables keyed by
        # account id share one string per account.
        self._hot: dict[str, Any] = {}
        # Keys ``set`` but not written since: their value exists only in ``_hot``.
        self._dirty: set[str] = set()
        # Hot keys written since they were loaded: their stored entry, which goes to the store when
        # they are evicted (a key only read is already there). A subset of ``_hot``'s keys.
        self._written: dict[str, bytes] = {}
        self._raw_headers = [_raw_header(p) for p in range(partitions)]
        # Partitions that may have entries (written or recovered) since the store was last emptied.
        self._held: set[int] = set()
        self._base = state_dir or tempfile.gettempdir()
        os.makedirs(self._base, exist_ok=True)
        _remove_dead_siblings(self._base)
        self._open_store()
        self._write_opt = _write_options()
        # Recovered records not yet written to the store (see ``restore``).
        self._restoring: WriteBatch | None = None
        self._restoring_n = 0
        self.hydrated = 0
        self.evicted = 0
        self.marker = marker
        self.marked: dict[int, set[str]] = {}

    def _open_store(self) -> None:
        self.path = tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-", dir=self._base)
        self._db = Rdict(self.path, _options())
        # Removes the directory when the table is closed, collected, or at interpreter exit.
        self._finalizer = weakref.finalize(self, _close_store, self._db, self.path)

    def close(self) -> None:
        """Close the local store and delete its directory; the table is unusable afterwards."""
        self._finalizer()

    def get(self, key: str) -> Any:
        value = self._hot.get(key)
        if value is not None:
            return value
        if key in self._hot:  # a written JSON null: the store may hold an older value
            return None
        if self._restoring is not None:
            self._flush_restored()
        stored = self._db.get(key.encode())
        if stored is None:
            return None
        value = self.codec.decode(memoryview(stored)[_HEADER:])
        self._hot[sys.intern(key)] = value
        self.hydrated += 1
        return value

    def set(self, key: str, value: _V) -> _V:
        """Hold ``value`` for ``key`` until it is written with ``put_many``; returns it."""
        key = sys.intern(key)
        self._hot.pop(key, None)
        self._hot[key] = value
        self._dirty.add(key)
        return value

    def keys(self) -> Set[str]:
        """Keys with a written or recovered value, and keys ``set`` since (reads the whole store)."""
        self._flush_restored()
        keys = {k.decode() for k in _stored_keys(self._db)}
        keys.update(self._written)
        keys.update(self._dirty)
        return keys

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        if key in self._written or key in self._dirty:
            return True
        self._flush_restored()
        return self._db.get(key.encode()) is not None

    def __len__(self) -> int:
        return len(self.keys())

    async def put_many(self, producer: AIOKafkaProducer,
                       changes: Iterable[tuple[int, str, Any]]) -> list[Awaitable[Any]]:
        """Set every (partition, key, value) and publish the changelog records in per-partition
        batches; returns the delivery futures."""
        by_partition: dict[int, list[Outgoing]] = {}
        written, hot, dirty, headers, intern = self._written, self._hot, self._dirty, self._raw_headers, sys.intern
        encode = self.codec.encode
        for partition, key, value in changes:
            key = intern(key)
            # orjson's result holds a buffer of several KB whatever its length: it is dropped here
            # and the record sent from an exact-size copy, rather than held for the whole batch.
            stored = written[key] = (
                (headers[partition] if partition < len(headers) else _raw_header(partition)) + encode(value))
            hot.pop(key, None)  # re-inserted last: the oldest written are evicted first
            hot[key] = value
            if dirty:
                dirty.discard(key)
            by_partition.setdefault(partition, []).append((key.encode(), stored[_HEADER:], []))
        self._held.update(by_partition)
        futures = await send_partitioned(producer, self.topic, by_partition)
        self.evict()
        return futures

    def evict(self) -> int:
        """Keep at most ``hot_max`` decoded values, the most recently written or read: the others
        are dropped, those written since they were loaded after putting their last write in the
        store. Call only when every change to a value from ``get`` has been written (``set`` values
        are kept until written). Returns the number of values evicted."""
        return self._evict_oldest(len(self._hot) - self.hot_max)

    def make_room(self, upcoming: Set[str]) -> int:
        """Before a batch that will use the keys ``upcoming``: evict the oldest values it does not
        use, so that its keys fit in ``hot_max`` beside what stays. Otherwise the hot set holds
        ``hot_max`` values of earlier batches plus every new key of this one until it ends: with
        many distinct accounts, twice the decoded state at the peak. A wrong guess of the keys only
        evicts more or less. Call only where ``evict`` may be called. Returns the values evicted."""
        hot = self._hot
        if len(hot) + len(upcoming) <= self.hot_max:
            return 0
        new = sum(1 for k in upcoming if k not in hot)
        return self._evict_oldest(len(hot) + new - self.hot_max, keep=upcoming)

    def _evict_oldest(self, excess: int, keep: Set[str] = frozenset()) -> int:
        if excess <= 0:
            return 0
        hot, dirty = self._hot, self._dirty
        victims: list[str] = []
        for key in hot:
            if key not in dirty and key not in keep:
                victims.append(key)
                if len(victims) >= excess:
                    break
        written = self._written
        batch: WriteBatch | None = None
        for key in victims:
            del hot[key]
            stored = written.pop(key, None)
            if stored is not None:
                if batch is None:
                    batch = WriteBatch(raw_mode=True)
                batch.put(key.encode(), stored)
        if batch is not None:
            # Recovered records are older than any write: they must not land after it.
            self._flush_restored()
            self._db.write(batch, self._write_opt)
        self.evicted += len(victims)
        return len(victims)

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget every key of ``partitions`` (a rebalance: reads the whole store)."""
        gone = set(partitions)
        for p in gone:
            self.marked.pop(p, None)
        if not gone or not self._held:  # nothing was written or recovered since the store was emptied
            return
        if gone >= self._held:
            self._empty()
            return
        self._held -= gone
        self._flush_restored()
        hot, dirty, written = self._hot, self._dirty, self._written
        # Keys only ``set`` (no write yet) have no partition and stay: a batch in flight owns them.
        dropped = {k for k, v in written.items() if _partition_of(v) in gone}
        for key in dropped:
            del written[key]
            hot.pop(key, None)
            dirty.discard(key)
        # Deletes go in bounded batches: a partition can hold a million keys.
        batch = WriteBatch(raw_mode=True)
        n = 0
        for k, v in _stored_items(self._db):
            key = k.decode()
            if key in written:  # a later write, in a partition that stays, supersedes the entry
                continue
            if key in dropped or _partition_of(v) in gone:
                batch.delete(k)
                n += 1
                hot.pop(key, None)
                dirty.discard(key)
                if n >= _RESTORE_BATCH:
                    self._db.write(batch, self._write_opt)
                    batch, n = WriteBatch(raw_mode=True), 0
        if n:
            self._db.write(batch, self._write_opt)

    def _empty(self) -> None:
        """``drop`` of every partition with entries: a new, empty store instead of deleting each key.
        A worker that stops or loses all its partitions with 300k accounts: 0.31 s instead of 2.35 s
        (in-process), and the old store's memory goes back at once (RSS 473 MiB after, not 583)."""
        # As in ``drop``: only keys ``set`` and never written or recovered stay.
        db = self._db
        self._flush_restored()
        kept = {k for k in self._dirty if k not in self._written and db.get(k.encode()) is None}
        self._hot = {k: v for k, v in self._hot.items() if k in kept}
        self._dirty = kept
        self._written = {}
        self._held = set()
        self._finalizer()
        self._open_store()

    def restore(self, partition: int, key: bytes | None, value: bytes | None) -> None:
        """Apply one changelog record (a tombstone when ``value`` is None) as recovery reads it:
        the value goes to the store as it is and is decoded only when ``get`` asks for it."""
        k = key.decode() if key else ""
        self._hot.pop(k, None)
        self._dirty.discard(k)
        self._written.pop(k, None)
        if self._restoring is None:
            self._restoring = WriteBatch(raw_mode=True)
        if value is None:
            self._restoring.delete(key or b"")
        else:
            header = self._raw_headers[partition] if partition < len(self._raw_headers) else _raw_header(partition)
            self._restoring.put(key or b"", header + value)
            self._held.add(partition)
            if self.marker is not None and self.marker in value:
                self.marked.setdefault(partition, set()).add(k)
        self._restoring_n += 1
        if self._restoring_n >= _RESTORE_BATCH:
            self._flush_restored()

    def _flush_restored(self) -> None:
        if self._restoring is not None:
            batch, self._restoring, self._restoring_n = self._restoring, None, 0
            self._db.write(batch, self._write_opt)

    def footprint(self) -> dict[str, int]:
        """Sizes for logs and measurements (walks every key)."""
        self._flush_restored()
        db = self._db
        disk = 0
        for entry in os.scandir(self.path):
            if entry.is_file(follow_symlinks=False):
                disk += entry.stat(follow_symlinks=False).st_size
        return {"keys": len(self), "hot": len(self._hot), "dirty": len(self._dirty), "written": len(self._written),
                "cold": db.property_int_value("rocksdb.estimate-num-keys") or 0,
                "memtable_bytes": db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0,
                "disk_bytes": disk, "hydrated": self.hydrated, "evicted": self.evicted}

    def sizes(self) -> dict[str, int]:
        """Cheap sizes for metrics (no walk over the keys): decoded keys in memory, the local
        store's key estimate and its bytes on disk."""
        disk = 0
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    disk += entry.stat(follow_symlinks=False).st_size
        return {"hot_keys": len(self._hot),
                "stored_keys_estimate": self._db.property_int_value("rocksdb.estimate-num-keys") or 0,
                "disk_bytes": disk}

    async def ensure_topic(self, bootstrap: KafkaClients | str, replication: int) -> None:
        await create_topic(bootstrap, self.topic, self.partitions, replication, {"cleanup.policy": "compact"})

    async def recover(self, bootstrap: KafkaClients | str, partitions: Iterable[int]) -> int:
        """Read the changelog of ``partitions`` from the start to its end; returns records read."""
        tps = [TopicPartition(self.topic, p) for p in partitions]
        if not tps:
            return 0
        self.drop(p.partition for p in tps)
        # read_committed: a batch whose transaction was aborted (a fenced owner's) never becomes state.
        consumer = AIOKafkaConsumer(**clients_for(bootstrap).common(), enable_auto_commit=False, group_id=None,
                                    auto_offset_reset="earliest", isolation_level="read_committed")
        await consumer.start()
        started = time.monotonic()
        n = 0
        try:
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            pending = {tp for tp in tps if ends[tp] > 0}
            await consumer.seek_to_beginning(*tps)
            while pending:
                batch = await consumer.getmany(*pending, timeout_ms=500)
                for tp, records in batch.items():
                    for r in records:
                        self.restore(tp.partition, r.key, r.value)
                        n += 1
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
            self._flush_restored()
        finally:
            await consumer.stop()
        log.info("recovered %d %s records for partitions %s in %.2fs", n, self.name,
                 sorted(p.partition for p in tps), time.monotonic() - started)
        return n
