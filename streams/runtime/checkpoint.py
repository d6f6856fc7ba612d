"""Exactly-once in the processor: the one module that orders a batch's writes and fences a worker
that lost its partitions. Read this first; ``docs/exactly-once.md`` has the whole picture.

Each *input partition* p (partition p of every input topic: interaction-events, credit-grants,
gaming-reviews, detector-fingerprints, which the Range assignor hands to one worker together, and
partition p of every state table) has its own transactional producer, ``transactional.id`` =
``<group>-p<p>``. ``Checkpoint.write`` writes a batch in this order:

0. begin a transaction for every partition the batch writes and add each one's input offsets
   (``send_offsets_to_transaction``): the batch's first requests, each checked by the broker;
1. publish the outputs: usage-enriched (to the input's partition), refinement-feed, dead-letters
   (DUPLICATE ones too), gaming-alerts, fingerprint observations for other workers, credit-balances
   and credit-notifications (to the input's partition);
2. write detection state (detector accounts, fingerprints, alert states), each change in its
   partition's transaction;
3. write account state (grants; usage, ``AccountUsage`` in ``streams/credits/account_state.py``:
   debits, last offset applied, event ids metered, balance memory), likewise;
4. once every record of 1-3 is acknowledged, commit each transaction: a partition's state and
   input offsets become visible together.

State is read back only read_committed (``ChangelogTable.recover``): a crash anywhere leaves all of
a partition's batch state and offsets or none of them, and every output of a committed batch exists.
Outputs stay outside the transactions: the sink and other readers of the output topics read them as
plain records (transaction markers take offsets, which the sink's store plans and every lag figure
count), and each output carries what makes a repeat of it recognisable (the guards below).

The fence. When a worker is assigned p it first starts p's transactional producer (``acquire``):
the broker bumps that id's epoch and aborts any transaction still open under the old epoch, and
only then is p's state read back and p consumed. A worker that lost p (paused past its session
timeout, partitioned away) still holds the producer of the old epoch: the broker rejects every
request of it for p (``ProducerFenced``), and whatever it had added to its open transaction was
aborted. Step 0 comes before any output, so a worker resuming before a batch learns it is fenced
before publishing anything of it; the batch is then dropped whole (fenced on one partition means it
left the group: a member still in it gives partitions back only between batches, under the batch
lock), and the worker takes those partitions again only from a new assignment.

The cluster away. A retriable Kafka error anywhere in a write (a send's metadata wait, a request or
delivery timeout, a refused connection: ``streams/runtime/rewind.py``) raises out of ``write`` with
nothing committed that was not committed before it; the service then *rewinds*
(``PartitionedService.rewind``): it drops the in-memory state of every partition, and once the
cluster answers, re-acquires the partitions the group still gives it, re-reads their state and
seeks to the committed offsets, as a restart would, without leaving the group. The re-acquire is
what aborts the attempt's open transactions (a new epoch), and it is the fence again, so it is safe
by the argument below: every acquire is followed by reading the committed state, whoever acquired
last is the one writer, and a worker it fenced drops its batch. A transaction open longer than the
transaction timeout (a write stuck across an outage) is aborted by the broker, which also bumps the
epoch: that fence is not proof of another owner, so it raises ``TransactionTimedOut`` (retriable,
so a rewind) instead of dropping the partitions until the next assignment. Only the rewind of a
worker that still holds a generation re-acquires, under the batch lock, so it never competes with
its own batches; should the group have moved a partition without this worker knowing yet, the one
it fences rewinds or drops its batch, and the next rebalance settles the owner. Nothing of this is
on the hot path: no extra request per batch.

    Invariant: for each input partition, the state and committed offsets that any later owner
    reads were written by one owner at a time, in epoch order, a batch at a time, with the
    outputs of that batch published before. A worker that lost the partition can neither commit
    offsets nor make state visible for it. The only thing it may still append is outputs of the
    batch it was already past step 0 with when it was paused; those repeat, record for record,
    what the next owner publishes for the same input offsets from the same committed state, and
    the guards below keep one copy.

Guards: the fence and the transaction make a batch land once; these make a *replay* land once (a
batch re-read after a crash, a rebalance, or records fetched from a committed offset read just
before a fenced owner's last commit completed) and a *resend* count once:

- usage state ``input_partition``/``applied_offset``, the last input offset applied to the account
  (streams/credits/meter.py): a replayed event is skipped, not debited again;
- usage state ``seen_event_ids``, the event ids metered within the window (streams/credits/dedup.py):
  a client's resend is dead-lettered as DUPLICATE, not debited again;
- usage state ``forwarded_offsets``, the highest origin offset applied per origin partition
  (streams/credits/meter.py ``first_forward``): a record forwarded twice is applied once;
- grant folding is idempotent per ISSUED/REVOKED event (streams/credits/ledger.py): grant state;
- usage state ``balance_seq``/``notifications_sent`` (streams/credits/balances.py): a replayed
  batch's balance takes the sequence number it had and its notifications the ids they had
  (``account/kind/grant/threshold``); notifications recorded as sent are never derived again;
- detector account state ``o``, the last offset folded (streams/detection/engine.py): detector state
  and the alerts it fires;
- fingerprint state ``o``, the last offset received per source partition (streams/detection/engine.py):
  an observation arriving twice (replayed, or re-published by a replay); one received is in the
  fingerprint's state from then on, held until the source clocks release it, then folded;
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
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    IllegalOperation,
    KafkaError,
    ProducerFenced,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.structs import OffsetAndMetadata

from streams.runtime.background_stops import BackgroundStops
from streams.runtime.changelog import ChangelogTable
from streams.runtime.kafka_clients import KafkaClients
from streams.runtime.rewind import TransactionBroken, TransactionTimedOut
from streams.settings import Settings

log = logging.getLogger("creditflow.checkpoint")

Change = tuple[ChangelogTable, int, str, Any]  # table, partition, key, value
Publish = Callable[[AIOKafkaProducer], Awaitable[list[Awaitable[Any]]]]

# aiokafka's default, written down: a fence met later than this after a write began may be the
# broker's abort of a timed-out transaction rather than another owner's (``TransactionTimedOut``).
TRANSACTION_TIMEOUT_MS = 60_000


async def stop_transactional(producer: AIOKafkaProducer) -> None:
    """Stop a transactional producer that may have been fenced, quietly."""
    try:
        await producer.stop()
    except KafkaError as exc:  # a fenced producer may refuse to flush; nothing of it is wanted
        log.debug("closing a released producer: %r", exc)
    # A fenced producer's transaction manager fails a future nobody awaits (aiokafka); asyncio would
    # log it at ERROR as "never retrieved" though the fence is expected and already handled.
    waiter = getattr(getattr(producer, "_txn_manager", None), "_transaction_waiter", None)
    if isinstance(waiter, asyncio.Future) and waiter.done() and not waiter.cancelled():
        waiter.exception()


def transactional_id(group: str, partition: int) -> str:
    """One id per input partition: the next owner of the partition reuses it, which is the fence."""
    return f"{group}-p{partition}"


@dataclass
class BatchWrites:
    """What one batch writes, in the order it is written."""

    publish: Publish | None = None
    detection_state: list[Change] = field(default_factory=list)
    account_state: list[Change] = field(default_factory=list)
    # Next offset to read per input topic-partition, by input partition (none for the detector timer).
    offsets: dict[int, dict[TopicPartition, int]] = field(default_factory=dict)

    def partitions(self) -> set[int]:
        return {p for _t, p, _k, _v in (*self.detection_state, *self.account_state)} | self.offsets.keys()


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
        self.kafka = KafkaClients(settings, bootstrap)
        self.group = group
        self.tables = tuple(tables)
        self.producers: dict[int, AIOKafkaProducer] = {}
        # Outputs go through the worker's idempotent producer, outside the transactions (see above).
        self.outputs: AIOKafkaProducer | None = None
        self._closing = BackgroundStops()
        # Step 0 started by ``begin`` while the batch is computed: partition -> (producer, its future).
        self._begun: dict[int, tuple[AIOKafkaProducer, asyncio.Future[bool]]] = {}
        # When the first of them started: a transaction is open from step 0 (``TransactionTimedOut``).
        self._begun_at: float | None = None
        self.transactions = 0
        # Seconds of the last committed write's steps: begin, send, acknowledged, commit.
        self.last_phases: tuple[float, ...] = ()

    def _producer(self, partition: int) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **self.kafka.common(), transactional_id=transactional_id(self.group, partition),
            acks="all", enable_idempotence=True, compression_type=self.settings.compression_type,
            linger_ms=5, max_batch_size=1024 * 1024, transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
            # A batch's first request follows the previous commit at once and is often told to retry
            # while that commit's markers are written (CONCURRENT_TRANSACTIONS): 100 ms is too long.
            retry_backoff_ms=10,
        )

    async def prepare(self) -> None:
        """Before joining the group: a first transactional producer makes the broker create its
        transaction log (50 partitions by default) and find this worker a coordinator, seconds on a
        fresh cluster that would otherwise pass inside the assignment callback, where they count
        against the session timeout. Its id fences nothing (no partition's)."""
        producer = AIOKafkaProducer(**self.kafka.common(), transactional_id=f"{self.group}-start",
                                    acks="all", enable_idempotence=True)
        await producer.start()
        await producer.stop()

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
            # A step 0 begun for a batch that is dropped (a rewind between ``begin`` and ``write``):
            # its producer goes, and the next owner's acquire aborts whatever it opened.
            begun = self._begun.pop(p, None)
            if begun is not None:
                _discard(begun[1])
            if not self._begun:
                self._begun_at = None
            producer = self.producers.pop(p, None)
            if producer is not None:
                self._closing.start(stop_transactional(producer))

    async def close(self) -> None:
        self.release(list(self.producers))
        await self._closing.wait()

    def begin(self, offsets: Mapping[int, Mapping[TopicPartition, int]]) -> None:
        """Start step 0 for a batch's input partitions as soon as its records are fetched, so the fence
        check and the offsets' round trips overlap the meter and detection instead of following them.
        ``offsets`` must be the batch's ``BatchWrites.offsets``. ``write`` awaits these before it
        publishes anything, so step 0 still precedes every output."""
        for p, by_tp in offsets.items():
            producer = self.producers.get(p)
            if producer is not None and p not in self._begun:
                self._begun[p] = (producer, asyncio.ensure_future(self._begin(producer, by_tp)))
                if self._begun_at is None:
                    self._begun_at = time.perf_counter()

    async def write(self, batch: BatchWrites) -> set[int]:
        """Write ``batch`` (the order above); returns the partitions lost to another worker (fenced),
        for which nothing of the batch was committed. Any other failure raises, and nothing not yet
        committed may be committed after it: a retriable one (the cluster away, or
        ``TransactionTimedOut``) is the caller's cue to rewind (``PartitionedService.rewind``)."""
        begun, self._begun = self._begun, {}
        begun_at, self._begun_at = self._begun_at, None
        parts = sorted(batch.partitions())
        missing = {p for p in parts if p not in self.producers}  # released under the batch
        if missing:
            await self._drop_begun(begun)
            return set(parts)
        producers = {p: self.producers[p] for p in parts}
        # Begun for a partition this batch does not write, or by a producer since replaced: not ours.
        await self._drop_begun({p: b for p, b in begun.items() if producers.get(p) is not b[0]})
        t0 = time.perf_counter()
        opened = min(t0, begun_at) if begun_at is not None else t0
        # 0. Every transaction begins with the input offsets: the broker checks each epoch.
        step0 = [begun[p][1] if p in begun and begun[p][0] is producers[p]
                 else self._begin(producers[p], batch.offsets.get(p)) for p in parts]
        fenced = {p for p, ok in zip(parts, await asyncio.gather(*step0), strict=True) if not ok}
        if fenced:
            # Fenced on one partition means this worker left the group (a member still in it gives its
            # partitions back only between batches): the others are going, or gone, too.
            self._timed_out(opened, fenced)
            await asyncio.gather(*(self._abort(producers[p]) for p in parts if p not in fenced))
            return self._lost(parts)
        t1 = time.perf_counter()
        # 1-3. Sent in this order; all acknowledged before the commit (state is invisible until then,
        # so it need not wait for the outputs' acknowledgements, only the commit does).
        pending: list[Awaitable[Any]] = []
        try:
            if batch.publish is not None:  # 1. outputs
                assert self.outputs is not None, "set outputs, the producer of the outputs, before writing"
                pending.extend(await batch.publish(self.outputs))
            for changes in (batch.detection_state, batch.account_state):  # 2. detection, 3. account state
                by_partition: dict[int, list[tuple[ChangelogTable, int, str, Any]]] = {}
                for change in changes:
                    by_partition.setdefault(change[1], []).append(change)
                for p, items in by_partition.items():
                    pending.extend(await _put(producers[p], items))
        except IllegalOperation as exc:  # "not in transaction": aiokafka ended one under the write
            await asyncio.gather(*pending, return_exceptions=True)
            broken = _broken(producers.values())
            if not isinstance(broken, ProducerFenced):
                _raise_for_ended(broken, exc)
            errors: list[BaseException] = [broken]
        else:
            # Every future is awaited (a fenced producer fails them all; none is left unretrieved).
            errors = [r for r in await asyncio.gather(*pending, return_exceptions=True) if isinstance(r, BaseException)]
        t2 = time.perf_counter()
        if any(isinstance(e, ProducerFenced) for e in errors):
            self._timed_out(opened, parts)
            await asyncio.gather(*(self._abort(pr) for pr in producers.values()))
            return self._lost(parts)
        if errors:
            _raise_for_ended(_broken(producers.values()), errors[0])
        t3 = time.perf_counter()
        # 4. State and input offsets become visible together, partition by partition.
        outcomes = await asyncio.gather(*(self._commit(producers[p]) for p in parts), return_exceptions=True)
        failed = [r for r in outcomes if isinstance(r, BaseException)]
        if failed:
            _raise_for_ended(_broken(producers.values()), failed[0])
        committed = [r is True for r in outcomes]
        if not all(committed):
            self._timed_out(opened, [p for p, ok in zip(parts, committed, strict=True) if not ok])
        self.last_phases = (t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3)  # read by the metrics
        log.debug("%d transactions: begin %.1f ms, send %.1f ms, acknowledged %.1f ms, commit %.1f ms", len(parts),
                  *(s * 1e3 for s in self.last_phases))
        self.transactions += sum(committed)
        # Every change is written: values the batch only read may go back to bytes.
        for table in self.tables:
            table.evict()
        return self._lost([p for p, ok in zip(parts, committed, strict=True) if not ok])

    @staticmethod
    def _timed_out(started: float, partitions: Iterable[int]) -> None:
        """Raise ``TransactionTimedOut`` when a fence came after the transaction timeout: the
        broker's abort of a transaction open that long bumps the epoch too, so it proves nothing
        about another owner (a write stuck across an outage meets exactly this)."""
        took = time.perf_counter() - started
        if took * 1000 >= TRANSACTION_TIMEOUT_MS:
            raise TransactionTimedOut(f"partitions {sorted(partitions)} fenced {took:.0f}s into a write, past the "
                                      f"transaction timeout ({TRANSACTION_TIMEOUT_MS / 1000:.0f}s)")

    async def _drop_begun(self, begun: Mapping[int, tuple[AIOKafkaProducer, asyncio.Future[bool]]]) -> None:
        """Abort transactions ``begin`` started for a batch that is not written after all."""
        if not begun:
            return
        results = await asyncio.gather(*(f for _pr, f in begun.values()), return_exceptions=True)
        await asyncio.gather(*(self._abort(pr) for (pr, _f), ok in zip(begun.values(), results, strict=True)
                               if ok is True))

    def _lost(self, partitions: Sequence[int]) -> set[int]:
        if partitions:
            log.warning("partitions %s were taken over by another worker; this batch of them is dropped",
                        sorted(partitions))
            self.release(partitions)
        return set(partitions)

    async def _begin(self, producer: AIOKafkaProducer, offsets: Mapping[TopicPartition, int] | None) -> bool:
        try:
            await producer.begin_transaction()
            if offsets:
                await producer.send_offsets_to_transaction(
                    {tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()}, self.group)
        except ProducerFenced:
            return False
        return True

    @staticmethod
    async def _commit(producer: AIOKafkaProducer) -> bool:
        try:
            await producer.commit_transaction()
        except ProducerFenced:
            return False
        return True

    @staticmethod
    async def _abort(producer: AIOKafkaProducer) -> None:
        txn = getattr(producer, "_txn_manager", None)
        if txn is not None and txn.is_fatal_error():
            return  # fenced: nothing to abort from here (the broker aborted it); aiokafka would assert
        try:
            await producer.abort_transaction()
        except KafkaError as exc:  # fenced: the broker aborted it already, or will
            log.debug("abort: %r", exc)


# Failures a rewind cannot mend: the worker exits and says why.
_PERMANENT = (TopicAuthorizationFailedError, GroupAuthorizationFailedError, TransactionalIdAuthorizationFailed)


def _broken(producers: Iterable[AIOKafkaProducer]) -> BaseException | None:
    """The error with which aiokafka ended a transaction under a write (an error it deems abortable,
    or its sender stopped: the transaction is then no longer "in transaction" and every send raises
    ``IllegalOperation``), or None while each one is still open."""
    for producer in producers:
        txn = getattr(producer, "_txn_manager", None)
        state = getattr(getattr(txn, "state", None), "name", "")
        if state not in ("ABORTABLE_ERROR", "FATAL_ERROR"):  # open, or committed by this write
            continue
        waiter = getattr(txn, "_transaction_waiter", None)
        if isinstance(waiter, asyncio.Future) and waiter.done() and not waiter.cancelled() and waiter.exception():
            return waiter.exception()
        return KafkaError(f"transaction ended under the write ({state})")
    return None


def _rewind_for(cause: BaseException) -> BaseException:
    """What ``write`` raises for a transaction that ended under it: nothing of it is committed, so the
    rewind (a fresh producer by re-acquiring, the committed state) mends it, unless it was refused."""
    if isinstance(cause, _PERMANENT):
        return cause
    return TransactionBroken(f"transaction ended under the write: {cause!r}")


def _raise_for_ended(cause: BaseException | None, error: BaseException) -> NoReturn:
    """Raise ``error`` itself while every transaction is still open (``cause`` None), else what a
    transaction that ended under the write with ``cause`` calls for (``_rewind_for``)."""
    if cause is None:
        raise error
    raise _rewind_for(cause) from error


def _discard(future: asyncio.Future[Any]) -> None:
    """Cancel a future nobody will await; one that already failed has its error retrieved (asyncio
    would log it at ERROR as never retrieved, though the batch it belonged to is dropped anyway)."""
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()


async def _put(producer: AIOKafkaProducer, changes: Sequence[Change]) -> list[Awaitable[Any]]:
    by_table: dict[ChangelogTable, list[tuple[int, str, Any]]] = {}
    for table, partition, key, value in changes:
        by_table.setdefault(table, []).append((partition, key, value))
    return [f for table, items in by_table.items() for f in await table.put_many(producer, items)]
