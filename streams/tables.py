"""Per-account state that survives crashes and moves with its partition: a dict in memory, backed
by a compacted Kafka changelog topic, recovered when a partition is assigned.

This is what a Faust table does; it is done here so the processor can write state in batches,
await its delivery before committing input offsets, and recover exactly the partitions that
the processor's own consumer group assigned (see ``streams/processor.py`` for why).

Memory: a decoded state costs several times its JSON (an account's detector state is ~8 KB of
dicts and lists, ~1.2 KB of JSON, ~0.2 KB compressed). So only a bounded set of recently written
or read keys is kept decoded ("hot", ``hot_max``); every other key is kept as its last changelog
write, deflated with a preset dictionary trained on the table's own values, and decoded again when
``get`` asks for it. The changelog records stay plain JSON: the producer's lz4 compresses whole
record batches better than per-record deflate would, at no cost to the write path.

Callers may change an object returned by ``get`` in place, but must write it with ``put_many``
before the batch ends: a key is turned back into bytes only at a safe point (``evict``, run by
``put_many`` and at the end of ``PartitionedService.save``), where its bytes equal its last write.
A new key that is not written yet is added with ``set`` and is never evicted before its write.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import zlib
from collections.abc import Awaitable, Iterable, Iterator, Set
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.batch_send import Outgoing, send_partitioned
from streams.settings import Settings
from streams.topics import create_topic

log = logging.getLogger("creditflow.tables")

_V = TypeVar("_V")

# A stored entry is a 3-byte header and a payload. Header byte 0 is the format: 0 = the JSON as it
# was written, n > 0 = that JSON as raw deflate with preset dictionary n; bytes 1-2 the partition,
# so the owner of a key costs no second dict.
_RAW = 0
_HEADER = 3
_MAX_PARTITIONS = 1 << 16
# With a dictionary, level 6 costs about what level 1 without one does (setting up the stream
# dominates for ~1 KB values) and stores ~2.5x less (``--sizes`` of tests/benchmarks/state_memory.py).
_LEVEL = 6
_WBITS = -15  # raw deflate: no zlib header and checksum per value
_MEMLEVEL = 8
_DICT_SAMPLES = 8  # values a dictionary is built from: more hardly helps, a larger one costs per value
_DICT_MAX = 16 * 1024
# Retrain after 1k, 2k, 4k, ... compressions, at least every 100k: values change shape as a table
# fills (an account first seen through a grant has no detector slots yet), and a dictionary that
# matches the current shape is what makes small values compress.
_RETRAIN_MIN = 1_000
_RETRAIN_MAX = 100_000
_MAX_DICTS = 255  # format byte; entries keep naming the dictionary they were deflated with

DEFAULT_HOT_KEYS: int = Settings.model_fields["state_hot_keys"].default


def _encode(value: Any) -> bytes:
    # orjson: state JSON is written for every touched key of every batch, ~4x faster than json.
    # Non-string keys become strings, as json.dumps does.
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits: the stdlib writes any size
        return json.dumps(value, separators=(",", ":")).encode()


# orjson reads an integer beyond 64 bits as a float, silently. Such values (written by the stdlib
# fallback of ``_encode``) are rare: only payloads with a run of 20+ digits (an id of digits may be
# one) take the stdlib path, which reads every JSON number exactly.
_LONG_DIGITS = re.compile(rb"\d{20,}")


def _decode(payload: bytes | memoryview) -> Any:
    return json.loads(bytes(payload)) if _LONG_DIGITS.search(payload) else orjson.loads(payload)


def _raw_header(partition: int) -> bytes:
    return bytes((_RAW, partition >> 8, partition & 0xFF))


def _partition_of(stored: bytes) -> int:
    return (stored[1] << 8) | stored[2]


class _Deflate:
    """Deflate of one table's values with preset dictionaries trained on values it compressed."""

    def __init__(self) -> None:
        self.dicts: list[bytes] = [b""]  # index = format byte; 0 is the raw format
        self._primed: zlib._Compress | None = None  # has the current dictionary loaded; copied per value
        self._samples: list[bytes] = []
        self._compressed = 0
        self._train_at = 0
        self.raw_kept = 0  # values that deflate did not make smaller

    def pack(self, partition: int, payload: bytes | memoryview) -> bytes:
        """The stored entry of ``payload`` (JSON) for ``partition``: deflated if that is smaller."""
        if self._compressed >= self._train_at and len(self.dicts) <= _MAX_DICTS:
            self._sample(payload)
        self._compressed += 1
        if self._primed is not None:
            c = self._primed.copy()
            packed = c.compress(payload) + c.flush()
            if len(packed) < len(payload):
                return bytes((len(self.dicts) - 1, partition >> 8, partition & 0xFF)) + packed
        self.raw_kept += 1
        return _raw_header(partition) + payload

    def _sample(self, payload: bytes | memoryview) -> None:
        self._samples.append(bytes(payload))
        if len(self._samples) < _DICT_SAMPLES:
            return
        zdict = b"".join(self._samples)[-_DICT_MAX:]
        self._samples = []
        self.dicts.append(zdict)
        self._primed = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS, _MEMLEVEL, zlib.Z_DEFAULT_STRATEGY, zdict)
        self._train_at = self._compressed + min(max(self._compressed, _RETRAIN_MIN), _RETRAIN_MAX)

    def payload(self, stored: bytes) -> bytes | memoryview:
        """The JSON a stored entry holds."""
        fmt = stored[0]
        if fmt == _RAW:
            return memoryview(stored)[_HEADER:]
        return zlib.decompressobj(_WBITS, self.dicts[fmt]).decompress(memoryview(stored)[_HEADER:])


class ChangelogTable:
    def __init__(self, name: str, topic: str, partitions: int, hot_max: int = DEFAULT_HOT_KEYS) -> None:
        if not 0 < partitions <= _MAX_PARTITIONS:
            raise ValueError(f"{name}: {partitions} partitions; at most {_MAX_PARTITIONS} are supported")
        self.name = name
        self.topic = topic
        self.partitions = partitions
        self.hot_max = hot_max
        # Every key with a value written or recovered: its stored entry (see _RAW). Keys are
        # interned so the tables keyed by account id share one string per account.
        self._store: dict[str, bytes] = {}
        # Decoded values, oldest first by their last write or decode; reads do not reorder, so
        # ``get`` costs one lookup like a plain dict.
        self._hot: dict[str, Any] = {}
        # Keys ``set`` but not written since: their value exists only in ``_hot``.
        self._dirty: set[str] = set()
        self._deflate = _Deflate()
        self._raw_headers = [_raw_header(p) for p in range(partitions)]
        self.hydrated = 0
        self.evicted = 0

    def get(self, key: str) -> Any:
        value = self._hot.get(key)
        if value is not None:
            return value
        stored = self._store.get(key)
        if stored is None:
            return None
        value = _decode(self._deflate.payload(stored))
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
        if not self._dirty:
            return self._store.keys()
        return self._store.keys() | self._dirty

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __contains__(self, key: object) -> bool:
        return key in self._store or key in self._dirty

    def __len__(self) -> int:
        return len(self._store) + sum(1 for k in self._dirty if k not in self._store)

    async def put_many(self, producer: AIOKafkaProducer,
                       changes: Iterable[tuple[int, str, Any]]) -> list[Awaitable[Any]]:
        """Set every (partition, key, value) and publish the changelog records in per-partition
        batches; returns the delivery futures."""
        by_partition: dict[int, list[Outgoing]] = {}
        store, hot, dirty, headers, intern = self._store, self._hot, self._dirty, self._raw_headers, sys.intern
        for partition, key, value in changes:
            key = intern(key)
            # orjson's result holds a buffer of several KB whatever its length: it is dropped here
            # and the record sent from an exact-size copy, rather than held for the whole batch.
            stored = store[key] = (
                (headers[partition] if partition < len(headers) else _raw_header(partition)) + _encode(value))
            hot.pop(key, None)  # re-inserted last: the oldest written are evicted first
            hot[key] = value
            if dirty:
                dirty.discard(key)
            by_partition.setdefault(partition, []).append((key.encode(), stored[_HEADER:], []))
        futures = await send_partitioned(producer, self.topic, by_partition)
        self.evict()
        return futures

    def evict(self) -> int:
        """Keep at most ``hot_max`` decoded values, the most recently written or read: the others go
        back to their stored entry (deflated now if it was still plain). Call only when every
        change to a value from ``get`` has been written (``set`` values are kept until written).
        Returns the number of values evicted."""
        hot = self._hot
        excess = len(hot) - self.hot_max
        if excess <= 0:
            return 0
        dirty = self._dirty
        victims: list[str] = []
        for key in hot:
            if key not in dirty:
                victims.append(key)
                if len(victims) >= excess:
                    break
        store, pack = self._store, self._deflate.pack
        for key in victims:
            del hot[key]
            stored = store[key]
            if stored[0] == _RAW:
                store[key] = pack(_partition_of(stored), memoryview(stored)[_HEADER:])
        self.evicted += len(victims)
        return len(victims)

    def drop(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        store, hot, dirty = self._store, self._hot, self._dirty
        # Keys only ``set`` (no write yet) have no partition and stay: a batch in flight owns them.
        for key in [k for k, v in store.items() if _partition_of(v) in gone]:
            del store[key]
            hot.pop(key, None)
            dirty.discard(key)

    def restore(self, partition: int, key: bytes | None, value: bytes | None) -> None:
        """Apply one changelog record (a tombstone when ``value`` is None) as recovery reads it:
        the JSON is kept as a stored entry and decoded only when ``get`` asks for it."""
        k = sys.intern(key.decode()) if key else ""
        self._hot.pop(k, None)
        self._dirty.discard(k)
        if value is None:
            self._store.pop(k, None)
        else:
            self._store[k] = self._deflate.pack(partition, value)

    def footprint(self) -> dict[str, int]:
        """Sizes for logs and measurements (walks every key)."""
        stored = self._store.values()
        return {"keys": len(self._store), "hot": len(self._hot), "dirty": len(self._dirty),
                "stored_bytes": sum(map(len, stored)), "deflated": sum(1 for v in stored if v[0] != _RAW),
                "dictionaries": len(self._deflate.dicts) - 1, "hydrated": self.hydrated, "evicted": self.evicted}

    async def ensure_topic(self, bootstrap: str, replication: int) -> None:
        await create_topic(bootstrap, self.topic, self.partitions, replication, {"cleanup.policy": "compact"})

    async def recover(self, bootstrap: str, partitions: Iterable[int]) -> int:
        """Read the changelog of ``partitions`` from the start to its end; returns records read."""
        tps = [TopicPartition(self.topic, p) for p in partitions]
        if not tps:
            return 0
        self.drop(p.partition for p in tps)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                    auto_offset_reset="earliest")
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
        finally:
            await consumer.stop()
        log.info("recovered %d %s records for partitions %s in %.2fs", n, self.name,
                 sorted(p.partition for p in tps), time.monotonic() - started)
        return n
