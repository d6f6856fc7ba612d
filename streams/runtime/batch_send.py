"""Publishing many records at once: one producer record batch per partition.

``AIOKafkaProducer.send`` costs tens of microseconds per record in Python (partitioner, futures,
accumulator bookkeeping); appending to a batch built per partition and sending it whole is a few.
The caller picks the partition (its input's, or the key's as the default partitioner would), so
keyed records still land where a plain ``send`` would put them.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer

# key, value, headers
Outgoing = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]  # aiokafka wants a list


async def send_partitioned(producer: AIOKafkaProducer, topic: str,
                           by_partition: Mapping[int, Iterable[Outgoing]]) -> list[Awaitable[Any]]:
    """Queue every record; returns the delivery futures (one per record batch) to await."""
    futures: list[Awaitable[Any]] = []
    for partition, records in by_partition.items():
        batch = producer.create_batch()
        for key, value, headers in records:
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None, headers=headers)
        if batch.record_count():
            futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``Utils.murmur2``), what the default partitioner hashes keys with. The same
    arithmetic as aiokafka's, reading the key four bytes at a time: about twice as fast, and most
    prompt fingerprints are hashed once."""
    length = len(data)
    h = 0x9747B28C ^ length
    n4 = length // 4
    for k in struct.unpack_from(f"<{n4}I", data):
        k = (k * _M) & _MASK
        k = ((k ^ (k >> 24)) * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest:
        tail = length & ~3
        if rest >= 3:
            h ^= data[tail + 2] << 16
        if rest >= 2:
            h ^= data[tail + 1] << 8
        h = ((h ^ data[tail]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


_M32 = np.uint32(_M)


def murmur2_many(keys: Sequence[bytes]) -> list[int]:
    """``murmur2`` of many keys at once: the same arithmetic on a column of 32-bit words per key length
    (numpy's uint32 products wrap like ``& _MASK``): 0.24 µs per 64-byte key against 4 µs here."""
    out = [0] * len(keys)
    by_length: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        by_length.setdefault(len(key), []).append(i)
    for length, idx in by_length.items():
        rows = np.frombuffer(b"".join([keys[i] for i in idx]), dtype=np.uint8).reshape(len(idx), length)
        n4 = length // 4
        words = np.ascontiguousarray(rows[:, :n4 * 4]).view("<u4")
        h = np.full(len(idx), 0x9747B28C ^ length, dtype=np.uint32)
        for j in range(n4):
            k = words[:, j] * _M32
            k ^= k >> np.uint32(24)
            k *= _M32
            h *= _M32
            h ^= k
        rest, tail = length & 3, n4 * 4
        if rest >= 3:
            h ^= rows[:, tail + 2].astype(np.uint32) << np.uint32(16)
        if rest >= 2:
            h ^= rows[:, tail + 1].astype(np.uint32) << np.uint32(8)
        if rest:
            h ^= rows[:, tail].astype(np.uint32)
            h *= _M32
        h ^= h >> np.uint32(13)
        h *= _M32
        h ^= h >> np.uint32(15)
        for i, value in zip(idx, h.tolist(), strict=True):
            out[i] = value
    return out


class KeyPartitions:
    """The partition Kafka's default partitioner gives a key (murmur2), cached: the same keys
    (fingerprints) come back all the time and aiokafka's murmur2 is pure Python."""

    # 100k keys cost ~20 MiB; 1M cost ~210 MiB, most of it prompt fingerprints seen once.
    def __init__(self, partitions: int, max_cached: int = 100_000) -> None:
        self.partitions = partitions
        self.max_cached = max_cached
        self._cache: dict[bytes, int] = {}

    def __call__(self, key: bytes) -> int:
        p = self._cache.get(key)
        if p is None:
            if len(self._cache) >= self.max_cached:
                self._cache.clear()
            p = self._cache[key] = (murmur2(key) & 0x7FFFFFFF) % self.partitions
        return p

    def prime(self, keys: Iterable[bytes]) -> None:
        """Cache the partitions of ``keys`` in one vectorised pass: calls for them are then lookups. A
        batch's keys are cached together even beyond ``max_cached`` (the cache is cleared first)."""
        cache = self._cache
        missing = list({key for key in keys if key not in cache})
        if not missing:
            return
        if len(cache) + len(missing) > self.max_cached:
            cache.clear()
        n = self.partitions
        for key, h in zip(missing, murmur2_many(missing), strict=True):
            cache[key] = (h & 0x7FFFFFFF) % n
