"""Replaying dead letters: their original bytes and headers back to the topic they came from, once.

Exactly once across runs: each replay is one Kafka transaction holding both the re-submitted record
and a marker, keyed by the dead-letter id, on the compacted ``dead-letter-replays`` topic. A replay
reads the markers first (read_committed) and skips every dead letter that has one, so running it
twice re-submits nothing; a replay that dies half-way leaves an aborted transaction whose records
read_committed consumers (the processor among them) never see. The fixed transactional id, started
before the markers are read, fences a concurrent or zombie replay. The re-submitted record carries
the ``creditflow-replay-of`` header.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import IllegalOperation, ProducerFenced

from streams.runtime.checkpoint import stop_transactional
from streams.runtime.kafka_clients import KafkaClients, clients_for
from streams.runtime.topics import create_topic
from streams.wire.codec import DecodeError, Decoder
from streams.wire.headers import REPLAY_OF_HEADER
from streams.wire.models import DeadLetter


class ReplayFenced(RuntimeError):
    """A later replay fenced this one before it committed."""


@dataclass(frozen=True)
class DeadLetterFilter:
    kinds: frozenset[str] = frozenset()
    topics: frozenset[str] = frozenset()  # full topic names
    since_ms: int | None = None
    until_ms: int | None = None

    def matches(self, dl: DeadLetter) -> bool:
        if self.kinds and dl["error_kind"] not in self.kinds:
            return False
        if self.topics and dl["source_topic"] not in self.topics:
            return False
        failed = _ms(dl["failed_at"])
        if self.since_ms is not None and failed < self.since_ms:
            return False
        return self.until_ms is None or failed < self.until_ms


def _ms(value: Any) -> int:
    return value if isinstance(value, int) else int(value.timestamp() * 1000)


def unique(dead: Iterable[DeadLetter]) -> list[DeadLetter]:
    """One per dead-letter id (a replayed processor batch writes the same dead letter again), in order."""
    seen: set[str] = set()
    out = []
    for dl in dead:
        if dl["dead_letter_id"] not in seen:
            seen.add(dl["dead_letter_id"])
            out.append(dl)
    return out


def to_replay(dead: Sequence[DeadLetter], replayed: Collection[str], wanted: DeadLetterFilter) -> list[DeadLetter]:
    """The matching dead letters not replayed yet, in their source order (dead letters are keyed by
    id, so the topic holds one source partition's across several of its own)."""
    todo = [dl for dl in unique(dead) if wanted.matches(dl) and dl["dead_letter_id"] not in replayed]
    return sorted(todo, key=lambda dl: (dl["source_topic"], dl["source_partition"], dl["source_offset"]))


def replay_headers(dl: DeadLetter) -> list[tuple[str, bytes]]:
    headers = [(h["key"], h["value"] or b"") for h in dl["headers"] if h["key"] != REPLAY_OF_HEADER]
    headers.append((REPLAY_OF_HEADER, dl["dead_letter_id"].encode()))
    return headers


async def read_all(bootstrap: KafkaClients | str, topic: str, decode: Callable[[Any], Any],
                   timeout: float = 60.0) -> list[Any]:
    """Every committed record of ``topic`` up to its end now, decoded (None results dropped)."""
    consumer = clients_for(bootstrap).consumer(group_id=None, enable_auto_commit=False,
                                               auto_offset_reset="earliest", isolation_level="read_committed")
    try:
        await consumer.start()
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end in {timeout:.0f}s")
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for rec in records:
                    value = decode(rec)
                    if value is not None:
                        out.append(value)
        return out
    finally:
        await consumer.stop()


async def read_dead_letters(bootstrap: KafkaClients | str, topic: str) -> list[DeadLetter]:
    decoder = Decoder("DeadLetter")

    def decode(rec: Any) -> DeadLetter | None:
        try:
            return decoder.decode(rec.value) if rec.value else None  # type: ignore[return-value]
        except DecodeError:
            return None

    return unique(await read_all(bootstrap, topic, decode))


async def read_replayed(bootstrap: KafkaClients | str, ledger: str) -> dict[str, dict[str, Any]]:
    """Dead-letter id -> its replay marker."""
    pairs = await read_all(bootstrap, ledger, lambda rec: (rec.key.decode(), json.loads(rec.value))
                           if rec.key and rec.value else None)
    return dict(pairs)


async def ensure_ledger(bootstrap: KafkaClients | str, ledger: str, partitions: int, replication: int) -> None:
    await create_topic(bootstrap, ledger, partitions, replication, {"cleanup.policy": "compact"})


async def replay(bootstrap: KafkaClients | str, dead_topic: str, ledger: str, transactional_id: str,
                 wanted: DeadLetterFilter, now_ms: int) -> tuple[int, list[str]]:
    """Re-submit the dead letters ``wanted`` selects that no run has replayed, in one transaction with
    their markers. Returns how many matching ones were replayed before, and the ids replayed now.

    The transactional producer starts before the markers are read: starting it fences every other run
    under the same id and aborts its open transaction, so no marker this run did not read can be
    committed by another run afterwards, and two runs at once never re-submit a dead letter twice
    (the later one to start wins; the earlier one fails on its next request)."""
    producer = clients_for(bootstrap).producer(transactional_id=transactional_id, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        dead = await read_dead_letters(bootstrap, dead_topic)
        replayed = await read_replayed(bootstrap, ledger)
        todo = to_replay(dead, replayed, wanted)
        already = sum(1 for dl in dead if wanted.matches(dl) and dl["dead_letter_id"] in replayed)
        if todo:
            try:
                async with producer.transaction():
                    for dl in todo:
                        await producer.send(dl["source_topic"], dl["original"], key=dl["key"],
                                            headers=replay_headers(dl))
                        marker = {"replayed_at": now_ms, "source_topic": dl["source_topic"],
                                  "error_kind": dl["error_kind"]}
                        await producer.send(ledger, json.dumps(marker).encode(), key=dl["dead_letter_id"].encode())
            # Fenced: aiokafka says so with ProducerFenced, or, once its sender has stopped on it, by
            # refusing to send outside a transaction.
            except (ProducerFenced, IllegalOperation) as exc:
                raise ReplayFenced("another `creditflow dead-letters replay` started while this one ran; nothing "
                                   "of this run was committed: run it again to replay what is left") from exc
    finally:
        await stop_transactional(producer)
    return already, [dl["dead_letter_id"] for dl in todo]
