"""The benchmark workload: synthetic events (``streams.synthetic.generator``) pre-produced to the real broker.

Events are encoded exactly as platform services send them (Avro single-object encoding, keyed by
account id, zstd batches) straight through aiokafka: the producer's validation is skipped because
the generator only makes valid events, and this keeps producing 1M events to about a minute.
For the ClickHouse-native peer the same events are also written as JSONEachRow to a separate topic,
because ClickHouse's ``Avro`` input format reads container files / Confluent framing, not Avro
single-object encoding.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich.progress import Progress

from schemas.catalogue import get_catalogue
from streams.runtime.batch_send import KeyPartitions, Outgoing, send_partitioned
from streams.runtime.topics import ensure_topics, topic_names
from streams.settings import Settings
from streams.synthetic.generator import Generator
from streams.wire.codec import encode_single_object_with

# Fields the ClickHouse-native peer needs; the JSON topic carries nothing else.
JSON_FIELDS = (
    "event_id", "occurred_at", "account_id", "team_id", "org_id", "plan", "model", "surface", "session_id",
    "outcome", "error_code", "input_tokens", "output_tokens", "cached_tokens", "thinking_tokens",
    "context_window_tokens", "reasoning_steps", "tool_calls", "latency_ms",
)
PARTITIONS = 6


@dataclass
class Workload:
    prefix: str
    events: int
    grants: int
    accounts: int
    json_topic: str | None
    produce_seconds: float
    # A deterministic sample (every k-th event) to check the SQL peer's pricing against Python.
    sample: list[dict[str, Any]] = field(default_factory=list)
    # The first events, decoded and encoded, for the in-process micro-timings.
    head: list[dict[str, Any]] = field(default_factory=list)
    head_encoded: list[bytes] = field(default_factory=list)

    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"


def producer(bootstrap: str, linger_ms: int = 20) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                            compression_type="zstd", linger_ms=linger_ms, max_batch_size=1024 * 1024)


async def create_topics(bootstrap: str, prefix: str) -> None:
    settings = Settings(kafka_bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=PARTITIONS)
    await ensure_topics(bootstrap, settings)
    await wait_leaders(bootstrap, list(topic_names(settings).values()))


async def wait_leaders(bootstrap: str, topics: list[str], timeout: float = 30.0) -> None:
    """Until every partition of ``topics`` has a leader: a record sent to a just-created topic
    before that fails with NotLeaderForPartition and would be lost from the workload."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            described = await admin.describe_topics(topics)
            if all(t.get("error_code", 0) == 0 and t.get("partitions")
                   and all(p.get("leader", -1) >= 0 for p in t["partitions"]) for t in described):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics without leaders after {timeout:.0f}s: {topics}")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


class Delivery:
    """Collects send failures so a lost record fails the run instead of skewing it silently."""

    def __init__(self) -> None:
        self.failures: list[BaseException] = []

    def __call__(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            self.failures.append(asyncio.CancelledError())
        elif fut.exception() is not None:
            self.failures.append(fut.exception())  # type: ignore[arg-type]

    def check(self) -> None:
        if self.failures:
            raise RuntimeError(f"{len(self.failures)} record(s) not delivered: {self.failures[0]!r}")


class BatchedSend:
    """Records queued and sent as whole record batches per partition, each where the default
    partitioner puts its key (``streams.runtime.batch_send``): ~20 µs per record less than ``send``, about a
    minute of the two workloads' production."""

    def __init__(self, p: AIOKafkaProducer, topic: str, delivery: Delivery, chunk: int = 10_000) -> None:
        self.p, self.topic, self.delivery, self.chunk = p, topic, delivery, chunk
        self.where = KeyPartitions(PARTITIONS)
        self.pending: list[tuple[bytes, bytes]] = []

    async def add(self, key: bytes, value: bytes) -> None:
        self.pending.append((key, value))
        if len(self.pending) >= self.chunk:
            await self.flush()

    async def flush(self) -> None:
        pending, self.pending = self.pending, []
        if not pending:
            return
        self.where.prime(key for key, _ in pending)
        by_partition: dict[int, list[Outgoing]] = {}
        for key, value in pending:
            by_partition.setdefault(self.where(key), []).append((key, value, []))
        for fut in await send_partitioned(self.p, self.topic, by_partition):
            fut.add_done_callback(self.delivery)  # type: ignore[attr-defined]


async def create_topic(bootstrap: str, name: str, partitions: int = PARTITIONS) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if name not in set(await admin.list_topics()):
            await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    await wait_leaders(bootstrap, [name])


def _distinct(gen: Generator, n: int) -> Iterator[dict[str, Any]]:
    """Events whose accounts are all different (round-robin), for the 1M-accounts memory figure."""
    accounts = gen.account_list
    for i, ev in enumerate(gen.events(n)):
        a = accounts[i % len(accounts)]
        ev.update(account_id=a.account_id, plan=a.plan, team_id=a.team_id, org_id=a.org_id,
                  ip_hash=a.ip_hash, device_hash=a.device_hash, payment_hash=a.payment_hash)
        yield ev


def to_json(ev: dict[str, Any]) -> bytes:
    row = {k: ev[k] for k in JSON_FIELDS}
    # The Kafka table calls it occurred_ms: the view's output column occurred_at is a DateTime64.
    row["occurred_ms"] = row.pop("occurred_at")
    return orjson.dumps(row)


async def produce_workload(bootstrap: str, prefix: str, n: int, *, accounts: int, seed: int,
                           json_topic: str | None, progress: Progress | None, distinct_accounts: bool = False,
                           sample_every: int = 500, head: int = 0) -> Workload:
    await create_topics(bootstrap, prefix)
    if json_topic:
        await create_topic(bootstrap, json_topic)
    catalogue = get_catalogue()
    sv_event = catalogue.latest("InteractionEvent")
    sv_grant = catalogue.latest("CreditGrant")
    gen = Generator(accounts=accounts, seed=seed, account_prefix=f"{prefix.strip('.')}-acct")
    grants = gen.grants()
    wl = Workload(prefix, n, len(grants), accounts, json_topic, 0.0)
    started = time.monotonic()
    p = producer(bootstrap)
    delivery = Delivery()
    await p.start()
    try:
        task = progress.add_task(f"producing {prefix}", total=n + len(grants)) if progress else None
        grants_out = BatchedSend(p, wl.topic("credit-grants"), delivery)
        for i, g in enumerate(grants, 1):
            await grants_out.add(g["account_id"].encode(), encode_single_object_with(g, sv_grant))
            if progress is not None and task is not None and i % 5000 == 0:
                progress.update(task, completed=i)
        await grants_out.flush()  # every grant is queued before the first event
        events_out = BatchedSend(p, wl.topic("interaction-events"), delivery)
        json_out = BatchedSend(p, json_topic, delivery) if json_topic else None
        stream = _distinct(gen, n) if distinct_accounts else gen.events(n)
        for i, ev in enumerate(stream):
            key = ev["account_id"].encode()
            value = encode_single_object_with(ev, sv_event)
            await events_out.add(key, value)
            if json_out is not None:
                await json_out.add(key, to_json(ev))
            if sample_every and i % sample_every == 0:
                wl.sample.append(ev)
            if i < head:
                wl.head.append(ev)
                wl.head_encoded.append(value)
            if progress is not None and task is not None and i % 5000 == 0:
                progress.update(task, completed=len(grants) + i)
        for out in (events_out, json_out):
            if out is not None:
                await out.flush()
        await p.flush()
        await asyncio.sleep(0)  # let the last done-callbacks run
        delivery.check()
        if progress is not None and task is not None:
            progress.update(task, completed=n + len(grants))
    finally:
        await p.stop()
    wl.produce_seconds = time.monotonic() - started
    return wl


def latency_events(n: int, *, accounts: int, seed: int, prefix: str) -> list[dict[str, Any]]:
    """Events generated ahead of time so the paced producer only stamps and encodes them."""
    gen = Generator(accounts=accounts, seed=seed, account_prefix=f"{prefix.strip('.')}-acct")
    return list(gen.events(n))


async def produce_grants(bootstrap: str, prefix: str, *, accounts: int, seed: int) -> int:
    sv = get_catalogue().latest("CreditGrant")
    gen = Generator(accounts=accounts, seed=seed, account_prefix=f"{prefix.strip('.')}-acct")
    p = producer(bootstrap)
    await p.start()
    try:
        delivery = Delivery()
        grants = gen.grants()
        for g in grants:
            fut = await p.send(f"{prefix}credit-grants", encode_single_object_with(g, sv), key=g["account_id"].encode())
            fut.add_done_callback(delivery)
        await p.flush()
        await asyncio.sleep(0)
        delivery.check()
        return len(grants)
    finally:
        await p.stop()


async def produce_paced(bootstrap: str, topic: str, events: list[dict[str, Any]], rate: float,
                        progress: Progress | None) -> float:
    """Send ``events`` at ``rate`` per second, stamping ``occurred_at`` with the send time (ms), so
    ``inserted_at - occurred_at`` in ClickHouse is production-to-visible latency. Returns the rate
    actually achieved."""
    sv = get_catalogue().latest("InteractionEvent")
    p = producer(bootstrap, linger_ms=5)
    delivery = Delivery()
    await p.start()
    task = progress.add_task(f"paced @ {rate:,.0f}/s", total=len(events)) if progress else None
    try:
        start = time.monotonic()
        sent = 0
        while sent < len(events):
            due = min(len(events), int((time.monotonic() - start) * rate) + 1)
            while sent < due:
                ev = events[sent]
                ev["occurred_at"] = time.time_ns() // 1_000_000
                fut = await p.send(topic, encode_single_object_with(ev, sv), key=ev["account_id"].encode())
                fut.add_done_callback(delivery)
                sent += 1
            if progress is not None and task is not None:
                progress.update(task, completed=sent)
            await asyncio.sleep(0.005)
        await p.flush()
        elapsed = time.monotonic() - start
        await asyncio.sleep(0)
        delivery.check()
    finally:
        await p.stop()
    return len(events) / elapsed if elapsed > 0 else 0.0
