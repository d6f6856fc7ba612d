"""The sink's own dead letters go to the dead-letters topic, acknowledged before the fetch is buffered."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from sinks.dead_letter_out import SinkDeadLetters
from sinks.service import ClickHouseSink
from streams.runtime.topics import CREDIT_GRANTS, DEAD_LETTERS, SUBSCRIPTION_CHANGES, topic_names
from streams.settings import Settings
from streams.wire.codec import Decoder, encode_single_object
from tests.unit.sinks.test_sink_registry import CHANGE, _Rec


class _Producer:
    """Fails the first ``failures`` sends, then acknowledges every record."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        if self.failures:
            self.failures -= 1
            raise KafkaConnectionError("broker away")
        self.sent.append((topic, value, key))
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _out(tmp_path: Path, producer: _Producer) -> tuple[SinkDeadLetters, dict[str, str]]:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1", data_dir=tmp_path, topic_prefix="t.")
    names = topic_names(settings)
    sink = ClickHouseSink(settings, "127.0.0.1:1", names)
    sink.make_decoders()
    return SinkDeadLetters(producer, names[DEAD_LETTERS], sink.routes, sink.decoders), names  # type: ignore[arg-type]


def test_only_undecodable_records_of_inputs_no_processor_reads_are_published(tmp_path: Path) -> None:
    producer = _Producer(failures=2)
    out, names = _out(tmp_path, producer)
    changes, grants = names[SUBSCRIPTION_CHANGES], names[CREDIT_GRANTS]
    good = encode_single_object(CHANGE, "SubscriptionChange")
    fetched = {TopicPartition(changes, 1): [_Rec(changes, 1, 5, good), _Rec(changes, 1, 6, b"junk", timestamp=9)],
               TopicPartition(grants, 1): [_Rec(grants, 1, 7, b"junk")]}  # the processor's to dead-letter
    assert asyncio.run(out.publish(fetched, lambda: True))
    assert [(t, k) for t, _v, k in producer.sent] == [(names[DEAD_LETTERS], f"{changes}:1:6".encode())]
    dead = Decoder("DeadLetter").decode(producer.sent[0][1])
    assert (dead["original"], dead["failed_at"], dead["error_kind"]) == (b"junk", 9, "BAD_MAGIC")
    assert out.published == 1


def test_a_fetch_made_stale_while_kafka_was_away_is_not_buffered(tmp_path: Path) -> None:
    out, names = _out(tmp_path, _Producer(failures=1))
    changes = names[SUBSCRIPTION_CHANGES]
    fetched = {TopicPartition(changes, 0): [_Rec(changes, 0, 0, b"junk")]}
    assert not asyncio.run(out.publish(fetched, lambda: False))


def test_published_dead_letters_are_counted_in_the_workers_metrics(tmp_path: Path) -> None:
    from streams.runtime.metrics import Metrics

    out, names = _out(tmp_path, _Producer())
    metrics = Metrics()
    out.on_published = metrics.dead_lettered
    changes = names[SUBSCRIPTION_CHANGES]
    fetched = {TopicPartition(changes, 0): [_Rec(changes, 0, n, b"junk") for n in range(3)]}
    assert asyncio.run(out.publish(fetched, lambda: True))
    assert metrics.dead_letters.labels("BAD_MAGIC")._value.get() == 3
