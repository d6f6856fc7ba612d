"""Exactly-once in the processor: the one module that orders a batch's writes and fences a worker
that lost its partitions. Read this first; ``docs/exactly-once.md`` has the whole picture.

The unit of work is one *input partition* p: partition p of every input topic (interaction-events,
credit-grants, gaming-reviews, detector-fingerprints; the Range assignor hands them to one worker
together) and partition p of every state table. A batch writes, for each p it read, in this order:

1. publish outputs and wait for their acknowledgements: usage-enriched (partition p),
   refinement-feed, dead-letters (DUPLICATE ones too), gaming-alerts, fingerprint observations for
   other partitions;
2. write detection state (detector accounts, fingerprints, alert states of partition p);
3. write account state (grants; usage: debits, last offset applied, event ids metered);
4. commit the input offsets.

Steps 2-4 are ONE Kafka transaction of the producer whose ``transactional.id`` is ``<group>-p<p>``:
the offsets are added to it first (``send_offsets_to_transaction``, step 0 below), the state
records after the outputs are acknowledged, and the commit makes state and offsets visible together.
State is read back only read_committed (``ChangelogTable.recover``), so a crash anywhere leaves
either all of a batch's state and offsets or none of them, and the outputs of every committed batch
exist. Outputs stay outside the transaction: the sink and other readers of the output topics read
them as plain records (a transaction's markers would shift their offsets), and each output carries
what makes a repeat of it recognisable (below).

The fence. When a worker is assigned p it first starts p's transactional producer (``acquire``):
the broker bumps that id's epoch and aborts any transaction still open under the old epoch, and
only then is p's state read back and p consumed. A worker that lost p (paused past its session
timeout, partitioned away) still holds the producer of the old epoch: the broker rejects every
request of it for p (``ProducerFenced``), and whatever it had added to its open transaction was
aborted. Step 0, adding the offsets to the transaction, is the first request of a batch and is
checked by the broker, so a fenced worker learns it before publishing anything of that batch; it
then drops what it computed for p (``release``) and takes p again only from a new assignment.

    Invariant: for each input partition, the state and committed offsets that any later owner
    reads were written by one owner at a time, in epoch order, a batch at a time, with the
    outputs of that batch published before. A worker that lost the partition can neither commit
    offsets nor make state visible for it. The only thing it may still append is the outputs of
    the one batch it had already passed step 0 with when it was paused; those repeat, record for
    record, what the next owner publishes for the same input offsets from the same committed
    state, and the guards below keep one copy.

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
        # Outputs go through the worker's idempotent producer, outside the transactions (see above).
        self.outputs: AIOKafkaProducer | None = None
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
            if batch.offsets:
                # 0. The transaction's first request goes to the broker, which checks the epoch: a
                # fenced worker stops here, before any output. The offsets count only at the commit.
                await producer.send_offsets_to_transaction(
                    {tp: OffsetAndMetadata(offset, "") for tp, offset in batch.offsets.items()}, self.group)
            if batch.publish is not None:  # 1. outputs, acknowledged before the state that says so
                assert self.outputs is not None, "set outputs, the producer of the outputs, before writing"
                pending = await batch.publish(self.outputs)
                if pending:
                    await asyncio.gather(*pending)
            state: list[Awaitable[Any]] = []
            for changes in (batch.detection_state, batch.account_state):  # 2. detection, 3. account state
                state.extend(await _put(producer, p, changes))
            if state:
                await asyncio.gather(*state)
            await producer.commit_transaction()  # 4. state and input offsets, at once
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
