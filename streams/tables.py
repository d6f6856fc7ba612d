"""Per-account state that survives crashes and moves with its partition: a dict in memory, backed
by a compacted Kafka changelog topic, recovered when a partition is assigned.

This is what a Faust table does; it is done here so the processor can write state in batches,
await its delivery before committing input offsets, and recover exactly the partitions that
the processor's own consumer group assigned (see ``streams/processor.py`` for why).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.batch_send import Outgoing, send_partitioned

log = logging.getLogger("creditflow.tables")


def _encode(value: Any) -> bytes:
    # orjson: state JSON is written for every touched key of every batch, ~4x faster than json.
    # Non-string keys become strings, as json.dumps does.
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits: the stdlib writes any size
        return json.dumps(value, separators=(",", ":")).encode()


class ChangelogTable:
    def __init__(self, name: str, topic: str, partitions: int) -> None:
        self.name = name
        self.topic = topic
        self.partitions = partitions
        self.data: dict[str, Any] = {}
        # Which partition owns a key, so a revoked partition's keys can be dropped.
        self._owner: dict[str, int] = {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    async def put_many(self, producer: AIOKafkaProducer,
                       changes: Iterable[tuple[int, str, Any]]) -> list[Awaitable[Any]]:
        """Set every (partition, key, value) and publish the changelog records in per-partition
        batches; returns the delivery futures."""
        by_partition: dict[int, list[Outgoing]] = {}
        for partition, key, value in changes:
            self.data[key] = value
            self._owner[key] = partition
            by_partition.setdefault(partition, []).append((key.encode(), _encode(value), []))
        return await send_partitioned(producer, self.topic, by_partition)

    def drop(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        for key in [k for k, p in self._owner.items() if p in gone]:
            del self.data[key]
            del self._owner[key]

    async def ensure_topic(self, bootstrap: str, replication: int) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(self.topic, self.partitions, replication,
                                                topic_configs={"cleanup.policy": "compact"})])
        except TopicAlreadyExistsError:
            pass
        finally:
            await admin.close()

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
                        key = r.key.decode() if r.key else ""
                        if r.value is None:
                            self.data.pop(key, None)
                            self._owner.pop(key, None)
                        else:
                            self.data[key] = orjson.loads(r.value)
                            self._owner[key] = tp.partition
                        n += 1
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
        finally:
            await consumer.stop()
        log.info("recovered %d %s records for partitions %s in %.2fs", n, self.name,
                 sorted(p.partition for p in tps), time.monotonic() - started)
        return n
