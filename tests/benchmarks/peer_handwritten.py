"""Peer 1, the hand-written loop: ``python -m tests.benchmarks.peer_handwritten '<json>'``.

What a competent engineer would write without a framework, and so the ceiling for Python here:
one aiokafka consumer, fastavro decoding (``streams.wire.codec.Decoder(fast=False)``, as the benchmark
defines this peer; through the codec's cavro path it took 38.9 CPU-s per 1M events in one full run,
41.5 on fastavro in the next), the project's own pure
functions (``validate_event``, ``price_event`` (classify, list price, charge), ``ledger.debit``,
``should_sample``), and large column-oriented clickhouse-connect inserts into the same migrated
``events`` table (so the rollup views fire as they do for creditflow), one insert in flight on a
worker thread while the loop keeps decoding. No Faust, no changelogs, no output topic, no
detectors, no dedup tokens; grants are read into a dict before the clock starts.

Config keys: bootstrap, input_prefix, data_dir, group, expected, flush_rows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from tests.benchmarks.common import cpu_seconds, emit, emit_result, now, peak_rss_bytes


async def _load_grants(bootstrap: str, topic: str) -> dict[str, dict[str, dict[str, Any]]]:
    from streams.credits.ledger import apply_grant_event
    from streams.wire.codec import Decoder

    decoder = Decoder("CreditGrant", fast=False)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    grants: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        tps = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or set())]
        if not tps:
            await consumer._client.force_metadata_update()
            tps = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or set())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        while True:
            behind = [tp for tp in tps if await consumer.position(tp) < end[tp]]
            if not behind:
                break
            for records in (await consumer.getmany(timeout_ms=200, max_records=10_000)).values():
                for rec in records:
                    g = decoder.decode(rec.value)
                    apply_grant_event(grants.setdefault(g["account_id"], {}), g)
    finally:
        await consumer.stop()
    return grants


async def _run(cfg: dict[str, Any]) -> dict[str, Any]:
    from sinks.client import connect
    from sinks.columns import EVENTS_COLUMNS
    from sinks.migrations import apply_migrations
    from streams.credits.ledger import debit
    from streams.credits.policy import load_policy, price_event, should_sample
    from streams.wire.codec import DecodeError, Decoder
    from streams.wire.validation import validate_event

    client = connect(f"chdb://{Path(cfg['data_dir']).resolve() / 'clickhouse'}")
    apply_migrations(client, 730)
    policy = load_policy()
    decode = Decoder("InteractionEvent", fast=False).decode
    grants = await _load_grants(cfg["bootstrap"], f"{cfg['input_prefix']}credit-grants")
    spent: dict[str, dict[str, int]] = {}
    expected = int(cfg["expected"])
    flush_rows = int(cfg.get("flush_rows", 50_000))
    columns = list(EVENTS_COLUMNS)

    consumer = AIOKafkaConsumer(
        f"{cfg['input_prefix']}interaction-events", bootstrap_servers=cfg["bootstrap"], group_id=cfg["group"],
        enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=20_000,
        fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
    loop = asyncio.get_running_loop()
    await consumer.start()
    emit("READY")
    first_at: float | None = None
    cpu_first = 0.0
    stored = 0
    dead = 0
    rows: list[tuple[Any, ...]] = []
    offsets: dict[TopicPartition, int] = {}
    in_flight: asyncio.Future[None] | None = None
    in_flight_commit: dict[TopicPartition, OffsetAndMetadata] = {}
    in_flight_rows = 0
    last_flush = time.monotonic()
    last_progress = 0.0

    def insert(batch: list[tuple[Any, ...]]) -> None:
        # Column-oriented: one Python list per column, built by a single transpose.
        client.insert("events", [list(c) for c in zip(*batch, strict=True)], column_names=columns,
                      column_oriented=True)

    async def settle() -> None:
        nonlocal in_flight, stored
        if in_flight is not None:
            await in_flight
            await consumer.commit(in_flight_commit)
            stored += in_flight_rows
            in_flight = None

    try:
        while stored < expected:
            batches = await consumer.getmany(timeout_ms=100, max_records=20_000)
            if batches and first_at is None:
                first_at, cpu_first = now(), cpu_seconds()
            now_ms = time.time_ns() // 1_000_000
            for tp, records in batches.items():
                partition = tp.partition
                for rec in records:
                    try:
                        ev = decode(rec.value)
                    except DecodeError:
                        dead += 1
                        continue
                    if validate_event(ev, now_ms):
                        dead += 1
                        continue
                    price = policy.price_for(ev["model"])
                    if price is None:
                        dead += 1
                        continue
                    cls, pr = price_event(policy, price, ev)
                    cat = cls.category
                    account = ev["account_id"]
                    account_grants = grants.get(account)
                    occurred = ev["occurred_at"]
                    if account_grants:
                        _, uncovered = debit(account_grants, spent.setdefault(account, {}), pr.charged_micro,
                                             occurred)
                    else:
                        uncovered = pr.charged_micro
                    priority = policy.priority[cat]
                    sampled, _ = should_sample(policy, ev["event_id"], priority, cat, ev["outcome"])
                    rows.append((
                        ev["event_id"], occurred, now_ms, account, ev.get("team_id"), ev.get("org_id"),
                        ev["plan"], ev["model"], ev["surface"], ev["session_id"], ev["outcome"],
                        ev.get("error_code"), ev["input_tokens"], ev["output_tokens"], ev.get("cached_tokens", 0),
                        ev["thinking_tokens"], ev["context_window_tokens"], ev["reasoning_steps"],
                        ev["tool_calls"], ev["latency_ms"], cat, cls.is_extended_context,
                        cls.is_complex_reasoning, cls.is_tool_use, policy.multiplier_text[cat], priority,
                        pr.list_micro, pr.charged_micro, pr.subsidy_micro, pr.charged_micro - uncovered,
                        uncovered, sampled, policy.version, partition, rec.offset,
                    ))
                if records:
                    offsets[tp] = records[-1].offset + 1
            due = len(rows) >= flush_rows or (rows and time.monotonic() - last_flush >= 0.5)
            if due:
                await settle()
                batch, rows = rows, []
                in_flight_commit = {tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()}
                in_flight_rows = len(batch)
                in_flight = loop.run_in_executor(executor, insert, batch)
                last_flush = time.monotonic()
            elif in_flight is not None and in_flight.done():
                await settle()
            if now() - last_progress >= 0.5:
                emit(f"PROGRESS {stored}")
                last_progress = now()
            if dead and stored + dead >= expected and not rows and in_flight is None:
                break
        await settle()
        end_at, cpu_end = now(), cpu_seconds()
        count = int(client.query("SELECT count() FROM events").result_rows[0][0])
    finally:
        await consumer.stop()
        executor.shutdown(wait=True)
    return {
        "mode": "handwritten", "first_consume_at": first_at, "end_at": end_at,
        "cpu_drain_s": cpu_end - cpu_first, "events_rows": count, "dead": dead,
        "cpu_total_s": cpu_seconds(), "peak_rss_bytes": peak_rss_bytes(),
    }


def main() -> None:
    cfg = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        result = asyncio.run(_run(cfg))
    except BaseException as exc:
        emit_result({"mode": "handwritten", "error": f"{type(exc).__name__}: {exc}"})
        logging.getLogger("bench").exception("hand-written peer failed")
        os._exit(1)
    emit_result(result)
    os._exit(0)


if __name__ == "__main__":
    main()
