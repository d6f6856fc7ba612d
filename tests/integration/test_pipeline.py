"""The pipeline end to end against the real broker and the real ClickHouse engine (chDB):
exact totals, SIGKILL crashes, a rebalance, dead letters."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from sinks.client import close, connect
from streams.producer import CreditflowProducer
from streams.runtime.topics import ensure_topics
from streams.settings import Settings
from streams.synthetic.generator import Generator
from streams.wire.codec import Decoder, encode_single_object
from tests.integration.expected import MICRO, expected
from tests.integration.harness import Worker, group_lag, wait_drained

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(topic_settings: Settings, tmp_path: Path) -> Settings:
    return topic_settings.model_copy(update={
        "clickhouse_url": f"chdb://{tmp_path / 'clickhouse'}",
        "sink_flush_seconds": 0.5,
        # Small batches so that crashes land in the middle of many of them.
        "process_batch": 400,
    })


def _produce(settings: Settings, grants: list[dict[str, Any]], events: list[dict[str, Any]],
             rate: float | None = None) -> None:
    async def run() -> None:
        async with CreditflowProducer(settings, bootstrap_servers=settings.kafka_bootstrap_servers) as p:
            for g in grants:
                await p.emit_grant(g)
            start = time.monotonic()
            for i, ev in enumerate(events, 1):
                await p.emit_interaction(ev)
                if rate is not None and i % 50 == 0:
                    ahead = i / rate - (time.monotonic() - start)
                    if ahead > 0:
                        await p.flush()
                        await asyncio.sleep(ahead)
            await p.flush()

    asyncio.run(run())


def _wait_grants_applied(settings: Settings, worker: Worker, timeout: float = 120) -> None:
    # Grants go first so every debit is deterministic, as the independent recomputation assumes.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.alive, worker.log_tail()
        if group_lag(settings.kafka_bootstrap_servers or "", f"{settings.app_id}-processor",
                     [settings.topic("credit-grants")]) == 0:
            return
        time.sleep(0.5)
    raise AssertionError("grants were not applied in time:\n" + worker.log_tail())


def _query(settings: Settings, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    return list(connect(settings.resolved_clickhouse_url).query(sql, parameters=params or {}).result_rows)


def _verify_exact(settings: Settings, gen: Generator, events: list[dict[str, Any]],
                  grants: list[dict[str, Any]]) -> None:
    """Every event exactly once, and every total equal to the independent recomputation."""
    want = expected(events, grants)
    try:
        count, distinct = _query(settings, "SELECT count(), uniqExact(event_id) FROM events")[0]
        assert (count, distinct) == (len(events), len(events)), "events must land exactly once"

        rows = _query(settings, """
            SELECT account_id, category, count(), sum(list_micro), sum(charged_micro), sum(subsidy_micro)
            FROM events GROUP BY account_id, category""")
        got = {(a, c): (n, Decimal(lst) * MICRO, Decimal(ch) * MICRO, Decimal(sub) * MICRO)
               for a, c, n, lst, ch, sub in rows}
        assert got.keys() == want.by_account_category.keys()
        for key, t in want.by_account_category.items():
            assert got[key] == (t.events, t.list_credits, t.charged, t.subsidy), key

        # Rollups (materialized views) agree with the raw events: no block counted twice.
        for table in ("usage_minute", "usage_hour"):
            r = _query(settings, f"SELECT sum(requests), sum(list_micro), sum(charged_micro), "
                                 f"sum(subsidy_micro) FROM {table}")[0]
            raw = _query(settings, "SELECT count(), sum(list_micro), sum(charged_micro), sum(subsidy_micro) "
                                   "FROM events")[0]
            assert tuple(r) == tuple(raw), table

        # Ledger: each grant burned exactly as recomputed, and it agrees with the events' funding.
        used = dict(_query(settings, "SELECT grant_id, sum(amount_micro) FROM credit_ledger GROUP BY grant_id"))
        assert {g: Decimal(v) * MICRO for g, v in used.items()} == {
            g: v for g, v in want.grant_used.items() if v > 0}
        funded = dict(_query(settings, "SELECT event_id, grant_funded_micro FROM events"))
        assert {e: Decimal(v) * MICRO for e, v in funded.items()} == want.grant_funded_by_event
        ledger_total, funded_total = _query(
            settings, "SELECT (SELECT sum(amount_micro) FROM credit_ledger), "
                      "(SELECT sum(grant_funded_micro) FROM events)")[0]
        assert ledger_total == funded_total

        sampled = _query(settings, "SELECT countIf(sampled) FROM events")[0][0]
        samples = _query(settings, "SELECT count() FROM refinement_samples FINAL")[0][0]
        assert samples == sampled > 0
        assert _query(settings, "SELECT count() FROM credit_grants FINAL")[0][0] == len(grants)
    finally:
        close(settings.resolved_clickhouse_url)


def _workload(accounts: int, n: int, seed: int, prefix: str) -> tuple[Generator, list[dict[str, Any]],
                                                                     list[dict[str, Any]]]:
    gen = Generator(accounts=accounts, seed=seed, account_prefix=prefix)
    grants = gen.grants()
    return gen, grants, list(gen.events(n))


def test_end_to_end_totals_are_exact(settings: Settings, workers: list[Worker], tmp_path: Path) -> None:
    gen, grants, events = _workload(150, 4_000, 11, "exact")
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers or "", settings))
    worker = Worker(settings, "all", tmp_path, "all").start()
    workers.append(worker)
    _produce(settings, grants, [])
    _wait_grants_applied(settings, worker)
    _produce(settings, [], events)
    wait_drained(settings, workers)
    assert worker.stop() == 0, worker.log_tail()
    _verify_exact(settings, gen, events, grants)


def test_sigkill_at_random_points_counts_every_event_once(settings: Settings, workers: list[Worker],
                                                           tmp_path: Path) -> None:
    gen, grants, events = _workload(200, 12_000, 23, "crash")
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers or "", settings))
    worker = Worker(settings, "all", tmp_path, "crashy").start()
    workers.append(worker)
    _produce(settings, grants, [])
    _wait_grants_applied(settings, worker)

    producer = threading.Thread(target=_produce, args=(settings, [], events, 1_200.0), daemon=True)
    producer.start()
    rng = random.Random(5)
    kills = 0
    while producer.is_alive() or kills < 3:
        time.sleep(rng.uniform(1.5, 4.0))
        worker.kill()
        kills += 1
        worker.start()
        if kills >= 6:
            break
    producer.join(timeout=120)
    assert not producer.is_alive()
    assert kills >= 3
    wait_drained(settings, workers, timeout=300)
    assert worker.stop() == 0, worker.log_tail()
    _verify_exact(settings, gen, events, grants)


def test_rebalance_when_a_processor_leaves_mid_stream(settings: Settings, workers: list[Worker],
                                                      tmp_path: Path) -> None:
    gen, grants, events = _workload(200, 10_000, 31, "rebal")
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers or "", settings))
    main = Worker(settings, "all", tmp_path, "main").start()
    extra = Worker(settings, "processor", tmp_path, "extra").start()
    workers.extend([main, extra])
    _produce(settings, grants, [])
    _wait_grants_applied(settings, main)
    producer = threading.Thread(target=_produce, args=(settings, [], events, 1_500.0), daemon=True)
    producer.start()
    time.sleep(3.0)
    assert extra.alive, extra.log_tail()
    extra.stop()  # leaves the group mid-stream: its partitions move to `main`
    producer.join(timeout=120)
    wait_drained(settings, [main], timeout=300)
    assert main.stop() == 0, main.log_tail()
    _verify_exact(settings, gen, events, grants)


def test_bad_records_go_to_dead_letters_and_the_partition_moves_on(settings: Settings, workers: list[Worker],
                                                                   tmp_path: Path) -> None:
    gen = Generator(accounts=20, seed=3, account_prefix="dlq")
    good = list(gen.events(300))
    valid = encode_single_object(good[0], "InteractionEvent")
    negative = dict(good[1], event_id="neg-1", input_tokens=-5)
    bad: list[tuple[bytes, str]] = [
        (b"not avro at all", "BAD_MAGIC"),
        (valid[:15], "TRUNCATED"),
        (valid + b"\x00\x01", "TRAILING_BYTES"),
        (b"\xc3\x01" + b"\x11" * 8 + valid[10:], "UNKNOWN_SCHEMA"),
        (encode_single_object(negative, "InteractionEvent"), "VALIDATION"),
    ]
    topic = settings.topic("interaction-events")
    bootstrap = settings.kafka_bootstrap_servers or ""
    asyncio.run(ensure_topics(bootstrap, settings))
    worker = Worker(settings, "all", tmp_path, "dlq").start()
    workers.append(worker)

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for i, ev in enumerate(good):
                await producer.send(topic, encode_single_object(ev, "InteractionEvent"),
                                    key=ev["account_id"].encode())
                if i % 60 == 0 and bad:
                    value, _ = bad[len(bad) - 1 - (i // 60) % len(bad)]
                    await producer.send(topic, value, key=b"dlq-000001", headers=[("origin", b"test")])
            for value, _ in bad[: max(0, len(bad) - 5)]:
                await producer.send(topic, value, key=b"dlq-000001")
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(send())
    wait_drained(settings, workers)
    assert worker.alive, "one bad event must never stop the worker"

    async def read_dead_letters() -> list[dict[str, Any]]:
        consumer = AIOKafkaConsumer(settings.topic("dead-letters"), bootstrap_servers=bootstrap,
                                    auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        try:
            out: list[dict[str, Any]] = []
            decoder = Decoder("DeadLetter")
            deadline = time.monotonic() + 20
            while len(out) < len(bad) and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    out.extend(decoder.decode(r.value) for r in records if r.value)
            return out
        finally:
            await consumer.stop()

    dead = asyncio.run(read_dead_letters())
    assert sorted(d["error_kind"] for d in dead) == sorted(kind for _, kind in bad)
    originals = {bytes(d["original"]) for d in dead}
    assert originals == {value for value, _ in bad}, "dead letters keep the original bytes"
    assert all(d["message"] and d["source_topic"] == topic and d["source_offset"] >= 0 for d in dead)
    assert worker.stop() == 0, worker.log_tail()
    try:
        assert _query(settings, "SELECT count() FROM events")[0][0] == len(good)
        kinds = defaultdict(int)
        for kind, n in _query(settings, "SELECT error_kind, count() FROM dead_letters FINAL GROUP BY error_kind"):
            kinds[kind] = n
        assert dict(kinds) == {kind: 1 for _, kind in bad}
    finally:
        close(settings.resolved_clickhouse_url)


def test_inputs_only_the_sink_reads_are_dead_lettered_too(settings: Settings, workers: list[Worker],
                                                          tmp_path: Path) -> None:
    bootstrap = settings.kafka_bootstrap_servers or ""
    topic = settings.topic("subscription-changes")
    change = {"change_id": "c-1", "account_id": "acct-1", "change": "UPGRADE", "from_plan": "FREE",
              "to_plan": "PRO", "occurred_at": 1_793_000_000_000}
    asyncio.run(ensure_topics(bootstrap, settings))
    worker = Worker(settings, "sink", tmp_path, "sink").start()
    workers.append(worker)

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send(topic, encode_single_object(change, "SubscriptionChange"), key=b"acct-1")
            await producer.send(topic, b"\x00\x00\x00\x00\x07junk", key=b"acct-1")
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(send())
    deadline = time.monotonic() + 120
    # The dead letter goes through the dead-letters topic (sinks/dead_letter_out.py): both drained.
    while group_lag(bootstrap, f"{settings.app_id}-sink", [topic, settings.topic("dead-letters")]) != 0:
        assert worker.alive and time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.5)
    assert worker.stop() == 0, worker.log_tail()
    try:
        assert _query(settings, "SELECT change_id, to_plan FROM subscription_changes FINAL") == [("c-1", "PRO")]
        dead = _query(settings, "SELECT source_topic, source_offset, error_kind, lower(hex(original)) "
                                "FROM dead_letters FINAL")
        assert dead == [(topic, 1, "UNKNOWN_SCHEMA", b"\x00\x00\x00\x00\x07junk".hex())]
    finally:
        close(settings.resolved_clickhouse_url)
