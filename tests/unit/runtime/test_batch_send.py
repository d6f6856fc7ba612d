"""Fingerprint observations are sent to the partition Kafka's default partitioner would pick, because
reviews keyed by the same fingerprint are produced with a plain keyed send and must meet its state."""

from __future__ import annotations

import hashlib
import random

from aiokafka.partitioner import DefaultPartitioner

from streams.runtime.batch_send import KeyPartitions


def test_key_partitions_agree_with_the_default_partitioner() -> None:
    keys = [hashlib.sha1(str(i).encode()).hexdigest()[:24].encode() for i in range(2_000)]
    for n in (1, 3, 6, 12):
        partitions = KeyPartitions(n)
        everyone = list(range(n))
        expected = [DefaultPartitioner()(k, everyone, everyone) for k in keys]
        assert [partitions(k) for k in keys] == expected
        assert [partitions(k) for k in keys] == expected  # again, from the cache
    assert len({KeyPartitions(6)(k) for k in keys}) == 6


def test_the_cache_stays_bounded() -> None:
    partitions = KeyPartitions(6, max_cached=10)
    for i in range(100):
        partitions(str(i).encode())
    assert len(partitions._cache) <= 10


def test_murmur2_is_kafkas_for_every_tail_length() -> None:
    from aiokafka.partitioner import murmur2 as reference

    from streams.runtime.batch_send import murmur2

    rng = random.Random(7)
    for length in range(0, 70):
        for _ in range(50):
            data = bytes(rng.randrange(256) for _ in range(length))
            assert murmur2(data) == reference(data), (length, data)
    # Known value from Kafka's own partitioner tests: "21" hashes to -973932308 as a signed int.
    assert murmur2(b"21") == -973932308 & 0xFFFFFFFF


def test_primed_partitions_of_keys_of_every_length_agree_with_the_default_partitioner() -> None:
    rng = random.Random(5)
    # Lengths 0-3 exercise every tail case; repeats and many lengths exercise the grouping.
    keys = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 70))) for _ in range(3_000)]
    keys += [b"", b"a", b"ab", b"abc", b"abcd", keys[7], keys[7]]
    everyone = list(range(6))
    partitions = KeyPartitions(6, max_cached=1_000)
    partitions.prime(keys)
    assert len(partitions._cache) == len(set(keys))  # one batch's keys stay together beyond max_cached
    assert [partitions(k) for k in keys] == [DefaultPartitioner()(k, everyone, everyone) for k in keys]
