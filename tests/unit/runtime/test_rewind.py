"""A Kafka outage inside a batch: which errors count as one, the bounded log, the checkpoint's reading
of a fence that came after the transaction timeout, and the rewind (fake consumer and producers)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)

from streams.runtime import partitioned
from streams.runtime.checkpoint import TRANSACTION_TIMEOUT_MS, Checkpoint
from streams.runtime.partitioned import PartitionedService
from streams.runtime.rewind import OutageLog, TransactionTimedOut, retriable
from streams.settings import Settings


@pytest.mark.parametrize("exc", [UnknownTopicOrPartitionError(), KafkaTimeoutError(), KafkaConnectionError(),
                                 NodeNotReadyError(), RequestTimedOutError(), NotLeaderForPartitionError(),
                                 OutOfOrderSequenceNumber(), TransactionTimedOut("late")])
def test_an_outage_is_retriable(exc: BaseException) -> None:
    assert retriable(exc)


@pytest.mark.parametrize("exc", [ProducerFenced(), TopicAuthorizationFailedError(), ValueError("bug"),
                                 AssertionError()])
def test_a_fence_or_a_bug_is_not(exc: BaseException) -> None:
    assert not retriable(exc)


def test_an_outage_is_logged_at_a_bounded_rate(caplog: pytest.LogCaptureFixture) -> None:
    log = OutageLog(logging.getLogger("test.outage"), interval=3600)
    with caplog.at_level(logging.WARNING, "test.outage"):
        for _ in range(500):
            log.failed("batch", KafkaConnectionError())
        assert log.active
        log.recovered()
    assert len(caplog.records) == 2, [r.getMessage() for r in caplog.records]
    assert "500 failed attempts" in caplog.records[-1].getMessage()
    assert not log.active


def test_a_fence_after_the_transaction_timeout_is_not_taken_for_another_owner() -> None:
    Checkpoint._timed_out(time.perf_counter() - 1.0, [1])  # an ordinary fence: the caller drops the partition
    with pytest.raises(TransactionTimedOut) as caught:
        Checkpoint._timed_out(time.perf_counter() - TRANSACTION_TIMEOUT_MS / 1000 - 1, [1, 2])
    assert retriable(caught.value)


class _Producer:
    def __init__(self, fail: int) -> None:
        self.fail, self.started, self.stopped = fail, False, False

    async def start(self) -> None:
        if self.fail:
            raise KafkaConnectionError("refused")
        self.started = True

    async def stop(self) -> None:
        self.stopped = True


class _Coordinator:
    generation = 3
    coordinator_id = 1


class _Consumer:
    def __init__(self, tps: list[TopicPartition], committed: dict[TopicPartition, int]) -> None:
        self.tps, self.committed_at = tps, committed
        self.positions: dict[TopicPartition, int | str] = {tp: 999 for tp in tps}
        self.resumed: tuple[TopicPartition, ...] = ()
        self._coordinator = _Coordinator()

    def assignment(self) -> set[TopicPartition]:
        return set(self.tps)

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.committed_at.get(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.positions[tp] = "beginning"

    def paused(self) -> set[TopicPartition]:
        return {self.tps[0]}

    def resume(self, *tps: TopicPartition) -> None:
        self.resumed = tps


class _Service(PartitionedService):
    def __init__(self, refusals: int) -> None:
        super().__init__(Settings(kafka_bootstrap_servers="127.0.0.1:1", kafka_log_interval_seconds=0), "x", "g", ())
        self.refusals = refusals  # attempts the cluster refuses before it is back
        self.made: list[_Producer] = []
        self.recovered: list[set[int]] = []

    def _outputs_producer(self) -> Any:
        producer = _Producer(fail=int(len(self.made) < self.refusals))
        self.made.append(producer)
        return producer

    async def recover(self, partitions: set[int]) -> None:
        self.recovered.append(set(partitions))
        self.owned |= partitions


def test_a_rewind_drops_state_waits_for_the_cluster_then_takes_back_and_seeks_to_committed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(partitioned, "BACKOFF_FIRST_S", 0.0)
    tps = [TopicPartition("events", 0), TopicPartition("grants", 0), TopicPartition("events", 1)]

    async def run() -> tuple[_Service, _Consumer, Any]:
        service = _Service(refusals=2)
        consumer = _Consumer(tps, {tps[0]: 40, tps[1]: 7})
        service.consumer = consumer  # type: ignore[assignment]
        old = _Producer(fail=0)
        service.producer = old  # type: ignore[assignment]
        service.owned = {0, 1, 5}
        released: list[set[int]] = []
        service.on_release = released.append  # type: ignore[method-assign]
        await service.rewind("batch", UnknownTopicOrPartitionError())
        await service._closing.wait()
        return service, consumer, (old, released)

    service, consumer, (old, released) = asyncio.run(run())
    # Everything held was dropped at once, and again after each refused attempt.
    assert released[0] == {0, 1, 5} and len(released) == 3
    # Two refused attempts, then a fresh outputs producer; the old one is closed.
    assert [p.started for p in service.made] == [False, False, True]
    assert service.producer is service.made[-1] and old.stopped
    # Taken back (the group still gives them), then sought to what is committed.
    assert service.recovered == [{0, 1}] and service.owned == {0, 1}
    assert consumer.positions == {tps[0]: 40, tps[1]: 7, tps[2]: "beginning"}
    assert consumer.resumed == (tps[0],)
    assert service.rewinds == 1 and not service.outage.active


def test_a_rewind_without_a_generation_leaves_taking_back_to_the_assignment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(partitioned, "BACKOFF_FIRST_S", 0.0)
    tp = TopicPartition("events", 0)

    async def run() -> tuple[_Service, _Consumer]:
        service = _Service(refusals=0)
        consumer = _Consumer([tp], {tp: 12})
        consumer._coordinator.generation = -1  # the membership was lost: a rejoin is coming
        service.consumer = consumer  # type: ignore[assignment]
        service.owned = {0}
        await service.rewind("detector flush", KafkaTimeoutError())
        return service, consumer

    service, consumer = asyncio.run(run())
    assert service.recovered == [] and service.owned == set()
    assert consumer.positions == {tp: 12}


def test_a_step_0_begun_for_a_dropped_batch_is_discarded_with_its_partition() -> None:
    async def run() -> tuple[asyncio.Future[bool], asyncio.Future[bool], Checkpoint]:
        checkpoint = Checkpoint(Settings(kafka_bootstrap_servers="127.0.0.1:1"), "127.0.0.1:1", "g", ())
        pending: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        failed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        failed.set_exception(KafkaConnectionError("refused"))
        checkpoint._begun = {1: (_Producer(0), pending), 2: (_Producer(0), failed)}  # type: ignore[dict-item]
        checkpoint._begun_at = time.perf_counter()
        checkpoint.release([1, 2])
        await asyncio.sleep(0)
        return pending, failed, checkpoint

    pending, failed, checkpoint = asyncio.run(run())
    # Not awaited by a write that will never come: cancelled, or its error retrieved (no asyncio noise).
    assert pending.cancelled() and failed.done()
    assert checkpoint._begun == {} and checkpoint._begun_at is None


class _State:
    def __init__(self, name: str) -> None:
        self.name = name


class _Txn:
    def __init__(self, state: str, cause: BaseException | None) -> None:
        self.state = _State(state)
        self._transaction_waiter: asyncio.Future[None] | None = None
        self.cause = cause


def _txn_producer(state: str, cause: BaseException | None = None) -> Any:
    producer = _Producer(0)
    txn = _Txn(state, cause)
    if cause is not None:
        loop = asyncio.new_event_loop()
        txn._transaction_waiter = loop.create_future()
        txn._transaction_waiter.set_exception(cause)
        loop.close()
    producer._txn_manager = txn  # type: ignore[attr-defined]
    return producer


def test_a_transaction_ended_under_a_write_is_read_for_its_cause() -> None:
    from streams.runtime.checkpoint import _broken, _rewind_for

    open_, committed = _txn_producer("IN_TRANSACTION"), _txn_producer("READY")
    assert _broken([open_, committed]) is None, "open or committed: nothing ended under the write"
    fenced = _txn_producer("FATAL_ERROR", ProducerFenced())
    assert isinstance(_broken([open_, fenced]), ProducerFenced)  # the fenced way, not a rewind
    lost = _txn_producer("FATAL_ERROR", KafkaConnectionError("sender stopped"))
    assert retriable(_rewind_for(_broken([lost])))  # type: ignore[arg-type]
    refused = _txn_producer("ABORTABLE_ERROR", TopicAuthorizationFailedError())
    assert not retriable(_rewind_for(_broken([refused])))  # type: ignore[arg-type]
