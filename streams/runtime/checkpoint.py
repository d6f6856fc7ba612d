"""Exactly-once in the processor: the one module that orders a batch's writes and fences a worker
that lost its partitions. Read this first; ``docs/exactly-once.md`` has the whole picture.

The unit of work is one *input partition* p: partition p of every input topic (interaction-events,
credit-grants, gaming-reviews, detector-fingerprints; the Range assignor hands them to one worker
together) and partition p of every state table. Each batch writes, for each p it read, in ONE Kafka
transaction of the producer whose ``transactional.id`` is ``<group>-p<p>``, in this order:

1. publish outputs: usage-enriched (partition p), refinement-feed, dead-letters (DUPLICATE ones
   too), gaming-alerts, fingerprint observations for other partitions;
2. write detection state (detector accounts, fingerprints, alert states of partition p);
3. write account state (grants, usage: debits, last offset applied, event ids metered);
4. commit the input offsets (``send_offsets_to_transaction``), then commit the transaction.

The transaction makes the four steps one: after a crash anywhere, a read_committed reader sees all
of a batch or none of it. The order is kept anyway because read_uncommitted readers (the sink, for
one) see records as they are appended: every output is appended before the state that says it was
published, and nothing is committed before the state.

The fence. When a worker is assigned p it first starts p's transactional producer (``acquire``):
the broker bumps that id's epoch and aborts any transaction still open under the old epoch, and
only then is p's state read back (read_committed) and p consumed. A worker that lost p (paused past
its session timeout, partitioned away) still holds the producer of the old epoch: the broker
rejects every produce, offset commit and transaction commit it sends for p (``ProducerFenced``),
and what it had appended in its open transaction was aborted. So:

    Invariant: for each input partition, the writes that read_committed readers see come from
    one owner at a time, in epoch order; a fenced owner's open batch is aborted as a whole, and a
    fenced owner cannot commit another. What it computed in memory is dropped (``release``) and
    p is taken again only after a new assignment.

Guards: the fence and the transaction make a batch land once; these make a *replay* land once (a
batch re-read after a crash, a rebalance, or records fetched from a committed offset read just
before a fenced owner's last commit completed) and a *resend* count once:

- usage state ``p``/``o``, the last input offset applied to the account (streams/credits/meter.py):
  a replayed event is skipped, not debited again;
- usage state ``ids``, the event ids metered within the window (streams/credits/dedup.py): a client's
  resend is dead-lettered as DUPLICATE, not debited again;
- grant folding is idempotent per ISSUED/REVOKED event (streams/credits/ledger.py): grant state;
- detector account state ``o``, the last offset folded (streams/detection/engine.py): detector state
  and the alerts it fires;
- fingerprint state ``o``, the last offset per source partition (streams/detection/engine.py): an
  observation arriving twice (replayed, or re-published by a replay);
- reviews are idempotent on ``decision_id`` and alert ids deterministic (streams/detection/alerts.py):
  alert state; an alert re-emitted replaces itself downstream;
- dead letter id = topic:partition:offset (streams/wire/dead_letters.py): one dead letter per input
  record (ReplacingMergeTree);
- the sink's running maximum of ``source_offset`` per usage-enriched partition (sinks/, the sink's
  replay guard): events, rollups and ledger rows re-published by a replay, or appended by an
  aborted batch and read by the sink before the abort (it reads read_uncommitted).

The guards rely on one thing the fence provides: the state a replay starts from is the state the
last committed batch wrote, so a replayed event either was applied (its offset is at or below the
account's mark, its outputs exist) or was not (it is metered now, from the same state, to the same
outputs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced
from aiokafka.structs import OffsetAndMetadata

from streams.runtime.changelog import ChangelogTable
from streams.settings import Settings

log = logging.getLogger("creditflow.checkpoint")

Change = tuple[ChangelogTable, str, Any]  # table, key, value (the partition is the batch's)
Publish = Callable[[AIOKafkaProducer], Awaitable[list[Awaitable[Any]]]]


def transactional_id(group: str, partition: int) -> str:
    """One id per input partition: the next owner of the partition reuses it, which is the fence."""
    return f"{group}-p{partition}"


@dataclass
class PartitionBatch:
    """What one batch writes for one input partition, in the order it is written."""

    partition: int
    publish: Publish | None = None
    detection_state: list[Change] = field(default_factory=list)
    account_state: list[Change] = field(default_factory=list)
    # Next offset to read, per input topic-partition consumed (empty for the detector timer's writes).
    offsets: dict[TopicPartition, int] = field(default_factory=dict)


def next_offsets(fetched: Mapping[TopicPartition, Sequence[Any]]) -> dict[int, dict[TopicPartition, int]]:
    """The offsets a batch commits, by input partition."""
    out: dict[int, dict[TopicPartition, int]] = {}
    for tp, records in fetched.items():
        if records:
            out.setdefault(tp.partition, {})[tp] = records[-1].offset + 1
    return out


class Checkpoint:
    def __init__(self, settings: Settings, bootstrap: str, group: str, tables: Iterable[ChangelogTable]) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.group = group
        self.tables = tuple(tables)
        self.producers: dict[int, AIOKafkaProducer] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.transactions = 0

    def _producer(self, partition: int) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, transactional_id=transactional_id(self.group, partition),
            acks="all", enable_idempotence=True, compression_type=self.settings.compression_type,
            linger_ms=5, max_batch_size=1024 * 1024,
        )

    async def acquire(self, partitions: Iterable[int]) -> None:
        """Fence every earlier owner of ``partitions``: start their transactional producers (the broker
        bumps each id's epoch and aborts its open transaction). Call before reading their state."""
        new = [p for p in partitions if p not in self.producers]
        if not new:
            return
        started = {p: self._producer(p) for p in new}
        results = await asyncio.gather(*(pr.start() for pr in started.values()), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            for pr in started.values():
                await pr.stop()
            raise failed[0]
        self.producers.update(started)
        log.info("fenced earlier owners of partitions %s", sorted(new))

    def release(self, partitions: Iterable[int]) -> None:
        """Forget the producers of partitions that moved away (their next owner fences them anyway)."""
        for p in partitions:
            producer = self.producers.pop(p, None)
            if producer is not None:
                task = asyncio.ensure_future(self._stop(producer))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _stop(producer: AIOKafkaProducer) -> None:
        try:
            await producer.stop()
        except KafkaError as exc:  # a fenced producer may refuse to flush; nothing of it is wanted
            log.debug("closing a released producer: %r", exc)

    async def close(self) -> None:
        self.release(list(self.producers))
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def write(self, batches: Sequence[PartitionBatch]) -> set[int]:
        """Write every partition's batch in its own transaction, all at once; returns the partitions
        whose transaction was fenced (lost to another worker: nothing of theirs was committed). Any
        other failure raises, and nothing not yet committed may be committed after it."""
        results = await asyncio.gather(*(self._write_one(b) for b in batches))
        # Every change is written: values the batch only read may go back to bytes.
        for table in self.tables:
            table.evict()
        return {p for p in results if p is not None}

    async def _write_one(self, batch: PartitionBatch) -> int | None:
        p = batch.partition
        producer = self.producers.get(p)
        if producer is None:
            return p  # released under the batch
        try:
            await producer.begin_transaction()
            pending: list[Awaitable[Any]] = []
            if batch.publish is not None:
                pending.extend(await batch.publish(producer))  # 1. outputs
            for changes in (batch.detection_state, batch.account_state):  # 2. detection, 3. account state
                pending.extend(await _put(producer, p, changes))
            if pending:
                await asyncio.gather(*pending)
            if batch.offsets:  # 4. input offsets, with everything above
                await producer.send_offsets_to_transaction(
                    {tp: OffsetAndMetadata(offset, "") for tp, offset in batch.offsets.items()}, self.group)
            await producer.commit_transaction()
        except ProducerFenced:
            log.warning("partition %d was taken over by another worker; this batch of it is dropped", p)
            self.release([p])
            return p
        self.transactions += 1
        return None


async def _put(producer: AIOKafkaProducer, partition: int, changes: Sequence[Change]) -> list[Awaitable[Any]]:
    by_table: dict[ChangelogTable, list[tuple[int, str, Any]]] = {}
    for table, key, value in changes:
        by_table.setdefault(table, []).append((partition, key, value))
    return [f for table, items in by_table.items() for f in await table.put_many(producer, items)]
