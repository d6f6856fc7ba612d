"""Peer 2, ClickHouse-native: ``python -m tests.benchmarks.peer_clickhouse_kafka '<json>'``.

ClickHouse's own Kafka table engine (inside chDB here) consumes the input topic and a materialized
view classifies and prices every event in SQL, straight into the migrated ``events`` table.

Differences from creditflow, stated in the output too:
- it reads a JSONEachRow copy of the same events (ClickHouse's ``Avro`` format reads Avro container
  files and ``AvroConfluent`` needs a registry; neither reads Avro single-object encoding);
- no grant burn-down (stateful, ordered per account: not expressible in a stateless view), so every
  charge is marked subscription-funded; no sampling, no output topic, no dead letters.

The SQL is generated from the same compiled policy the Python pricing uses (thresholds, multipliers,
per-model prices, priorities), with the same integer half-even rounding, and a sample of rows is
checked against ``streams.credits.policy`` by the orchestrator.

Config keys: bootstrap, json_topic, data_dir, group, expected, sample_ids, num_consumers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from tests.benchmarks.common import cpu_seconds, emit, emit_result, now, peak_rss_bytes

KAFKA_TABLE = "bench_kafka_in"
VIEW = "bench_kafka_mv"
# chDB 4.4 (ClickHouse 26.9) answers CREATE TABLE ... ENGINE = Kafka with this error although the
# table is created and consumes normally; anything else is a real failure.
SPURIOUS_CREATE_ERROR = "Shutdown was called"


def _sql_str(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _arr(values: list[Any]) -> str:
    return "[" + ", ".join(_sql_str(v) if isinstance(v, str) else str(v) for v in values) + "]"


def _half_even(num: str, den: str, name: str) -> str:
    """``num / den`` rounded half-to-even, like ``streams.credits.policy.div_half_even``."""
    return (f"intDiv({num}, {den}) + if(2 * ({num} % {den}) > {den} OR "
            f"(2 * ({num} % {den}) = {den} AND intDiv({num}, {den}) % 2 = 1), 1, 0) AS {name}")


def kafka_table_sql(bootstrap: str, topic: str, group: str, num_consumers: int) -> str:
    return f"""
CREATE TABLE {KAFKA_TABLE} (
    event_id String, occurred_ms Int64, account_id String, team_id Nullable(String),
    org_id Nullable(String), plan String, model String, surface String, session_id String,
    outcome String, error_code Nullable(String), input_tokens Int64, output_tokens Int64,
    cached_tokens Int64, thinking_tokens Int64, context_window_tokens Int64, reasoning_steps Int32,
    tool_calls Int32, latency_ms Int32
) ENGINE = Kafka SETTINGS
    kafka_broker_list = {_sql_str(bootstrap)}, kafka_topic_list = {_sql_str(topic)},
    kafka_group_name = {_sql_str(group)}, kafka_format = 'JSONEachRow',
    kafka_num_consumers = {num_consumers}, kafka_thread_per_consumer = 1,
    kafka_max_block_size = 65536, kafka_flush_interval_ms = 500, input_format_json_read_numbers_as_strings = 0,
    kafka_handle_error_mode = 'default'"""


def view_sql() -> str:
    """The materialized view: the credit policy in SQL, generated from the compiled policy."""
    from streams.credits.policy import (
        CATEGORIES,
        COMPLEX_REASONING,
        EXTENDED_CONTEXT,
        FALLBACK_MODEL,
        TOOL_USE,
        load_policy,
    )

    p = load_policy()
    models = [m for m in p.prices if m != FALLBACK_MODEL]
    fallback = p.prices.get(FALLBACK_MODEL)

    def price(kind: str) -> str:
        default = getattr(fallback, kind) if fallback else 0
        prices = _arr([getattr(p.prices[m], kind) for m in models])
        return f"toInt64(transform(model, {_arr(models)}, {prices}, {default}))"

    reasoning = f"reasoning_steps >= {p.min_steps}"
    if p.min_thinking is not None:
        reasoning = f"({reasoning} OR thinking_tokens >= {p.min_thinking})"
    flag = {EXTENDED_CONTEXT: "q_ext", COMPLEX_REASONING: "q_reason", TOOL_USE: "q_tools"}
    branches = ", ".join(f"{flag[c]}, {_sql_str(c)}" for c in p.precedence if c in flag)
    cats = list(CATEGORIES)
    return f"""
CREATE MATERIALIZED VIEW {VIEW} TO events AS
WITH
    context_window_tokens >= {p.min_context} AS q_ext,
    {reasoning} AS q_reason,
    tool_calls >= {p.min_tools} AS q_tools,
    multiIf({branches}, 'STANDARD_CHAT') AS q_cat,
    input_tokens * {price('input')} + output_tokens * {price('output')}
      + cached_tokens * {price('cached')} + thinking_tokens * {price('thinking')} AS q_per_thousand,
    {_half_even('q_per_thousand', '1000', 'q_list')},
    toInt64(transform(q_cat, {_arr(cats)}, {_arr([p.multiplier_milli[c] for c in cats])}, 1000)) AS q_milli,
    {_half_even('(q_list * 1000)', 'q_milli', 'q_charged')}
SELECT
    event_id, fromUnixTimestamp64Milli(occurred_ms, 'UTC') AS occurred_at, now64(3) AS processed_at,
    account_id, team_id, org_id, plan, model, surface, session_id, outcome, error_code,
    input_tokens, output_tokens, cached_tokens, thinking_tokens, context_window_tokens,
    reasoning_steps, tool_calls, latency_ms,
    q_cat AS category, q_ext AS is_extended_context, q_reason AS is_complex_reasoning, q_tools AS is_tool_use,
    transform(q_cat, {_arr(cats)}, {_arr([p.multiplier_text[c] for c in cats])}, '1.0') AS multiplier,
    transform(q_cat, {_arr(cats)}, {_arr([p.priority[c] for c in cats])}, 'LOW') AS priority,
    q_list AS list_micro, q_charged AS charged_micro, q_list - q_charged AS subsidy_micro,
    toInt64(0) AS grant_funded_micro, q_charged AS subscription_funded_micro, false AS sampled,
    {_sql_str(p.version)} AS policy_version, toInt32(_partition) AS source_partition,
    toInt64(_offset) AS source_offset
FROM {KAFKA_TABLE}"""


def _run(cfg: dict[str, Any]) -> dict[str, Any]:
    from sinks.client import connect
    from sinks.migrations import apply_migrations

    client = connect(f"chdb://{Path(cfg['data_dir']).resolve() / 'clickhouse'}")
    apply_migrations(client, 730)
    version = client.query("SELECT version()").result_rows[0][0]
    expected = int(cfg["expected"])
    create_note = None
    try:
        client.command(kafka_table_sql(cfg["bootstrap"], cfg["json_topic"], cfg["group"],
                                       int(cfg.get("num_consumers", 1))))
    except Exception as exc:
        if SPURIOUS_CREATE_ERROR not in str(exc):
            raise
        create_note = str(exc).strip().splitlines()[0]
    exists = client.query("SELECT count() FROM system.tables WHERE database = currentDatabase() "
                          "AND name = {t:String} AND engine = 'Kafka'", parameters={"t": KAFKA_TABLE})
    if int(exists.result_rows[0][0]) != 1:
        raise RuntimeError(f"Kafka engine table was not created ({create_note})")
    emit("READY")
    # Streaming starts when the view attaches, so the clock starts here.
    first_at, cpu_first = now(), cpu_seconds()
    client.command(view_sql())
    last_progress = 0.0
    count = 0
    deadline = time.monotonic() + float(cfg.get("timeout", 1800))
    while time.monotonic() < deadline:
        count = int(client.query("SELECT count() FROM events").result_rows[0][0])
        if count >= expected:
            break
        if now() - last_progress >= 0.5:
            emit(f"PROGRESS {count}")
            last_progress = now()
        time.sleep(0.05)
    end_at, cpu_end = now(), cpu_seconds()
    # Stop consuming before reading the sample, so the engine is quiet when the process exits.
    client.command(f"DROP VIEW IF EXISTS {VIEW}")
    sample: list[list[Any]] = []
    ids = cfg.get("sample_ids") or []
    if ids:
        rows = client.query(
            "SELECT event_id, category, is_extended_context, is_complex_reasoning, is_tool_use, multiplier, "
            "priority, list_micro, charged_micro, subsidy_micro FROM events WHERE event_id IN {ids:Array(String)}",
            parameters={"ids": ids}).result_rows
        sample = [list(r) for r in rows]
    with_error = None
    try:
        client.command(f"DROP TABLE IF EXISTS {KAFKA_TABLE}")
    except Exception as exc:  # shutting the consumer down is not part of the measurement
        with_error = str(exc).splitlines()[0]
    return {
        "mode": "clickhouse_kafka", "first_consume_at": first_at, "end_at": end_at,
        "cpu_drain_s": cpu_end - cpu_first, "events_rows": count, "clickhouse_version": version,
        "create_note": create_note, "drop_note": with_error, "sample": sample,
        "cpu_total_s": cpu_seconds(), "peak_rss_bytes": peak_rss_bytes(),
    }


def main() -> None:
    cfg = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        result = _run(cfg)
    except BaseException as exc:
        emit_result({"mode": "clickhouse_kafka", "error": f"{type(exc).__name__}: {exc}"})
        logging.getLogger("bench").exception("ClickHouse-native peer failed")
        os._exit(1)
    emit_result(result)
    # chDB's background Kafka threads can outlive a polite interpreter shutdown; the figures are out.
    os._exit(0)


if __name__ == "__main__":
    main()
