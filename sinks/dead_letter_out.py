"""Dead letters of the inputs only the sink reads (``Route.dead_letters_here``: subscription-changes,
gaming-reviews), published to the ``dead-letters`` topic like the processor's.

The topic is where dead letters live: ``creditflow dead-letters list|replay`` reads it, and the sink
stores it into the ``dead_letters`` table. A dead letter written straight into ClickHouse would be
invisible to both commands, so it could never be replayed.

Exactly once, as for the processor's outputs: the dead letters of a fetch are published and
acknowledged before its records are buffered, hence before any commit past them. A replay publishes
the same dead letter again (same id ``topic:partition:offset``, same content: ``failed_at`` is the
record's own timestamp), which the table (ReplacingMergeTree) and the commands keep once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from sinks.routing import Route
from streams.wire.codec import DecodeError, Decoder
from streams.wire.dead_letters import build_dead_letter, encode_dead_letter
from streams.wire.models import DeadLetter

log = logging.getLogger("creditflow.sink")

_RETRY_MAX_S = 30.0


def undecodable(records: Sequence[Any], decoder: Decoder) -> list[DeadLetter]:
    """The dead letters of the records ``decoder`` cannot read, in offset order."""
    out: list[DeadLetter] = []
    for rec in records:
        try:
            decoder.decode(rec.value)
        except DecodeError as exc:
            out.append(build_dead_letter(rec.topic, rec.partition, rec.offset, rec.key, rec.value,
                                         list(rec.headers or ()), exc.kind, exc.message, rec.timestamp or 0))
    return out


class SinkDeadLetters:
    def __init__(self, producer: AIOKafkaProducer, topic: str, routes: Mapping[str, Route],
                 decoders: Mapping[str, Decoder],
                 on_published: Callable[[Sequence[DeadLetter]], None] | None = None) -> None:
        self.producer = producer
        self.on_published = on_published
        self.topic = topic
        self.routes = routes
        self.decoders = decoders
        self.published = 0

    async def publish(self, fetched: Mapping[TopicPartition, Sequence[Any]], current: Callable[[], bool]) -> bool:
        """Publish the dead letters of ``fetched`` and wait for their acknowledgement, retrying while
        Kafka is away. False when ``current`` says a rebalance made the fetch stale meanwhile (its
        records must not be buffered: the positions went back to the committed offsets)."""
        dead = [dl for tp, records in fetched.items() if self.routes[tp.topic].dead_letters_here
                for dl in undecodable(records, self.decoders[tp.topic])]
        if not dead:
            return True
        delay = 0.5
        while True:
            try:
                futures = [await self.producer.send(self.topic, encode_dead_letter(dl),
                                                    key=dl["dead_letter_id"].encode()) for dl in dead]
                await asyncio.gather(*futures)
                break
            except KafkaError as exc:
                log.warning("publishing %d dead letter(s) failed (%r); retrying in %.1fs", len(dead), exc, delay)
                await asyncio.sleep(delay)
                delay = min(_RETRY_MAX_S, delay * 2)
                if not current():
                    return False
        self.published += len(dead)
        if self.on_published is not None:
            self.on_published(dead)
        return current()
