"""Kafka outages in a batch consumer: which errors are one, and how often to say so.

A broker that is away (killed, restarting, partitioned off) surfaces inside a batch as any of
aiokafka's retriable errors: a metadata wait that gives up (``UnknownTopicOrPartitionError``), a
request or delivery timeout, a connection refused, a leader or coordinator moving. None of them is a
bug, and none of them says what of the batch landed. The processor answers every one the same way,
with a *rewind* (``PartitionedService.rewind``): what a crash and restart would do, without leaving
the consumer group. Why that keeps exactly once is in ``streams/runtime/checkpoint.py``.
"""

from __future__ import annotations

import logging
import time

from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    KafkaUnavailableError,
    OutOfOrderSequenceNumber,
    UnknownProducerId,
)

# Retriable in effect though aiokafka does not flag them so: a delivery or wait that timed out, no
# broker at all, and the two errors an idempotent producer's sequence meets after records expired
# in an outage (they stop its sender for good; the rewind replaces the producer).
_ALSO_RETRIABLE = (KafkaTimeoutError, KafkaUnavailableError, OutOfOrderSequenceNumber, UnknownProducerId)

# Between rewind attempts while the cluster stays away.
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0


class TransactionTimedOut(KafkaError):
    """A transaction was fenced after being open longer than the transaction timeout: the broker
    aborts such a transaction itself and bumps the producer's epoch, so the fence may be the
    broker's and not another owner's. Retriable: the rewind takes the partitions again if the group
    still gives them to this worker."""

    retriable = True


class TransactionBroken(KafkaError):
    """aiokafka ended a transaction under a write after an error of its own (its sender stopped, or
    an abortable error): nothing of it is committed, and its producer is of no further use.
    Retriable: the rewind re-acquires a fresh producer and replays from the committed state."""

    retriable = True


def retriable(exc: BaseException) -> bool:
    """Whether ``exc`` is the Kafka cluster (or part of it) being away, not a bug."""
    return isinstance(exc, KafkaError) and (exc.retriable or isinstance(exc, _ALSO_RETRIABLE))


class OutageLog:
    """One line when an outage starts, then at most one per ``interval`` seconds while it lasts, and
    one when it ends: a worker riding out minutes of outage logs a few lines, not a stream."""

    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self.logger = logger
        self.interval = interval
        self.since: float | None = None
        self.failures = 0
        self._last = 0.0

    @property
    def active(self) -> bool:
        return self.since is not None

    def failed(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        self.failures += 1
        if self.since is None:
            self.since, self._last = now, now
            self.logger.warning("%s: Kafka unreachable (%r); rewinding to the committed offsets and "
                                "retrying until it is back", what, exc)
        elif now - self._last >= self.interval:
            self._last = now
            self.logger.warning("Kafka still unreachable after %.0fs (%d failed attempts; last: %s: %r)",
                                now - self.since, self.failures, what, exc)

    def recovered(self) -> None:
        if self.since is not None:
            self.logger.warning("Kafka reachable again after %.0fs (%d failed attempts); resumed from the "
                                "committed offsets", time.monotonic() - self.since, self.failures)
        self.since, self.failures = None, 0
