"""A platform service's local copy of every account's balance: the compacted credit-balances topic,
materialised in memory and kept current.

Usage (async)::

    async with BalanceView(settings) as view:
        await view.wait_caught_up(timeout=30)   # the whole topic read once
        balance = view.get("acct-42")           # a CreditBalance dict, or None
        if view.staleness().seconds > 5: ...    # how far behind the view may be

A lookup is a dict read, so it fits a request path. The view reads the topic from its start (no
consumer group, no committed offsets: every service instance keeps its own copy), and keeps per
account the latest balance: the highest ``balance_seq``, and of two with one number (a batch
replayed after a crash repeats the number it had) the later on the topic. ``accounts`` restricts it
to the partitions holding those accounts (a command that wants one balance reads one partition).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from schemas.contracts import CreditBalance
from streams.runtime.batch_send import murmur2
from streams.runtime.kafka_clients import KafkaClients
from streams.runtime.topics import CREDIT_BALANCES
from streams.settings import Settings, get_settings
from streams.wire.codec import DecodeError, Decoder

log = logging.getLogger("creditflow.balance_view")

# How often the view asks the broker for the topic's end offsets to know whether it is behind.
_END_CHECK_SECONDS = 0.5
# After a failed read or look at the end (the broker away): wait this long, then try again.
_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class Staleness:
    """How current the view is: ``lag`` records were on the topic and not yet read at the last check of
    the topic's end (-1: not checked yet), and the view holds everything that was on the topic
    ``seconds`` ago (inf: not yet known). The end is checked twice a second; a check's end offsets
    count as reached once the view has read up to them, even if more records came meanwhile, so a
    topic that is never quiet does not make a current view look stale."""

    lag: int
    seconds: float

    @property
    def caught_up(self) -> bool:
        return self.lag == 0


def partition_of(account: str, partitions: int) -> int:
    """The partition of an account's records: Kafka's default partitioner (murmur2 of the key)."""
    return (murmur2(account.encode()) & 0x7FFFFFFF) % partitions


class BalanceView:
    def __init__(self, settings: Settings | None = None, *, bootstrap_servers: str | None = None,
                 accounts: Iterable[str] | None = None) -> None:
        self.settings = settings or get_settings()
        self.bootstrap = bootstrap_servers or self.settings.kafka_bootstrap_servers or ""
        if not self.bootstrap:
            raise ValueError("BalanceView needs Kafka: set KAFKA_BOOTSTRAP_SERVERS or pass bootstrap_servers")
        self.topic = self.settings.topic(CREDIT_BALANCES)
        self.accounts = None if accounts is None else list(accounts)
        self.balances: dict[str, CreditBalance] = {}
        self.records_read = 0
        self._decoder = Decoder("CreditBalance")
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._tps: list[TopicPartition] = []
        self._lag = -1
        self._current_at: float | None = None
        # End offsets seen by checks not yet reached by the reading, oldest first: (when, ends). Bounded:
        # while the reading is stuck the oldest go first, and a newer one dates the view when reached.
        self._targets: deque[tuple[float, dict[TopicPartition, int]]] = deque(maxlen=64)
        self._caught_up = asyncio.Event()

    async def __aenter__(self) -> BalanceView:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        consumer = KafkaClients(self.settings, self.bootstrap).consumer(group_id=None, enable_auto_commit=False,
                                                                        auto_offset_reset="earliest")
        try:
            await consumer.start()  # inside: a consumer that could not bootstrap is closed too
            partitions = consumer.partitions_for_topic(self.topic)
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(self.topic)
            if not partitions:
                raise LookupError(f"topic {self.topic} does not exist (has a processor run yet?)")
            only = None if self.accounts is None else {partition_of(a, len(partitions)) for a in self.accounts}
            self._tps = [TopicPartition(self.topic, p) for p in sorted(partitions) if only is None or p in only]
            consumer.assign(self._tps)
            await consumer.seek_to_beginning(*self._tps)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    def get(self, account: str) -> CreditBalance | None:
        return self.balances.get(account)

    def staleness(self) -> Staleness:
        since = float("inf") if self._current_at is None else time.monotonic() - self._current_at
        return Staleness(self._lag, since)

    async def wait_caught_up(self, timeout: float | None = None) -> None:
        """Until the view has read everything that was on the topic when it last looked."""
        await asyncio.wait_for(self._caught_up.wait(), timeout)

    def _apply(self, value: bytes | None) -> None:
        if value is None:
            return
        try:
            rec: CreditBalance = self._decoder.decode(value)  # type: ignore[assignment]
        except DecodeError:
            return  # not a balance this reader understands; the processor is the only writer
        held = self.balances.get(rec["account_id"])
        if held is None or rec["balance_seq"] >= held["balance_seq"]:
            self.balances[rec["account_id"]] = rec

    async def _check_end(self, consumer: AIOKafkaConsumer) -> None:
        ends = await consumer.end_offsets(self._tps)
        self._targets.append((time.monotonic(), ends))
        positions = await self._reached(consumer)
        self._lag = sum(max(0, ends[tp] - positions[tp]) for tp in self._tps)

    async def _reached(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
        """Read positions; the newest check whose ends they reach dates what the view holds."""
        positions = {tp: await consumer.position(tp) for tp in self._tps}
        while self._targets and all(positions[tp] >= end for tp, end in self._targets[0][1].items()):
            self._current_at = self._targets.popleft()[0]
            self._caught_up.set()
        return positions

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        checked = 0.0
        while True:
            try:
                fetched = await consumer.getmany(timeout_ms=100, max_records=10_000)
                for records in fetched.values():
                    for r in records:
                        self._apply(r.value)
                    self.records_read += len(records)
                if fetched and self._targets:
                    await self._reached(consumer)
                now = time.monotonic()
                if now - checked >= _END_CHECK_SECONDS:
                    checked = now
                    await self._check_end(consumer)
            except KafkaError as exc:
                # The view keeps what it holds and its staleness keeps growing until the broker is back.
                log.warning("credit-balances view: %r; retrying in %.0f s", exc, _RETRY_SECONDS)
                await asyncio.sleep(_RETRY_SECONDS)
