"""The refinement team's views on the real engine (chDB), fed the way the sink feeds them: samples
written as RefinementSample v2 (before tool names and surface) and v3 both land and are counted."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from schemas.catalogue import versions
from sinks.client import close, connect
from sinks.columns import REFINEMENT_SAMPLES_COLUMNS
from sinks.migrations import apply_migrations
from streams.wire.codec import Decoder, encode_single_object_with

pytestmark = pytest.mark.integration

NOW = (int(time.time() * 1000) // 86_400_000 - 1) * 86_400_000


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Any]:
    url = f"chdb://{tmp_path / 'clickhouse'}"
    c = connect(url)
    apply_migrations(c, 730)
    yield c
    close(url)


def _sample(n: int, outcome: str, *, steps: int = 0, context: int = 1000, tools: tuple[str, ...] = (),
            surface: str = "API", error: str | None = None, latency: int = 100) -> dict[str, Any]:
    return {"event_id": f"s{n}", "account_id": f"a{n}", "occurred_at": NOW + n, "model": "atlas-large",
            "category": "COMPLEX_REASONING" if steps >= 3 else "TOOL_USE" if tools else "STANDARD_CHAT",
            "priority": "HIGH", "outcome": outcome, "error_code": error, "reason": "SAMPLED", "input_tokens": 10,
            "output_tokens": 5, "cached_tokens": 0, "thinking_tokens": 0, "context_window_tokens": context,
            "reasoning_steps": steps, "tool_calls": len(tools), "surface": surface, "tool_names": list(tools),
            "latency_ms": latency, "policy_version": "p1", "prompt_fingerprint": None}


def _store(client: Any, records: list[dict[str, Any]]) -> None:
    """Through the wire, as the sink does: encoded by the writer's version, decoded by the latest."""
    by_version = {sv.version: sv for sv in versions("RefinementSample")}
    decoder = Decoder("RefinementSample", None)
    rows = []
    for record, version in records_with_versions(records):
        value = decoder.decode(encode_single_object_with(record, by_version[version]))
        value["occurred_at"] = dt.datetime.fromtimestamp(value["occurred_at"] / 1000, tz=dt.UTC)
        rows.append([value.get(c) for c in REFINEMENT_SAMPLES_COLUMNS])
    client.insert("refinement_samples", rows, column_names=list(REFINEMENT_SAMPLES_COLUMNS))


def records_with_versions(records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    # The first record comes from a writer that predates v3: no surface, tool names or latency.
    old = {k: v for k, v in records[0].items() if k not in ("surface", "tool_names", "latency_ms")}
    return [(old, 2)] + [(r, 3) for r in records[1:]]


def test_failure_modes_and_integration_pain_points(client: Any) -> None:
    _store(client, [
        _sample(0, "ERROR", tools=("sql",), error="E_OLD"),  # written as v2: its tool is not known
        _sample(1, "SUCCESS", steps=7, context=150_000),
        _sample(2, "TIMEOUT", steps=7, context=150_000, error="E_DEADLINE"),
        _sample(3, "ERROR", steps=4, context=20_000, error="E_TOOL"),
        _sample(4, "ERROR", tools=("sql", "http_get"), surface="AGENT", error="E_TOOL", latency=900),
        _sample(5, "TIMEOUT", tools=("sql",), surface="AGENT", latency=30_000),
        _sample(6, "CLIENT_ABORT", tools=("http_get",), surface="IDE", latency=400),
        _sample(7, "SUCCESS", tools=("sql",), surface="AGENT", latency=200),
    ])
    old = client.query("SELECT surface, tool_names, latency_ms FROM refinement_samples WHERE event_id = 's0'")
    assert old.result_rows == [("", [], 0)]

    modes = client.query(
        "SELECT reasoning_depth, context_band, outcome, error_code, sum(samples), sum(failures) FROM v_failure_modes "
        "WHERE category = 'COMPLEX_REASONING' GROUP BY reasoning_depth, context_band, outcome, error_code "
        "ORDER BY reasoning_depth, context_band, outcome").result_rows
    assert modes == [("3-5 steps", "8k-32k", "ERROR", "E_TOOL", 1, 1),
                     ("6-10 steps", "100k-200k", "SUCCESS", "", 1, 0),
                     ("6-10 steps", "100k-200k", "TIMEOUT", "E_DEADLINE", 1, 1)]

    pain = client.query(
        "SELECT tool, surface, sum(samples), sum(errors), sum(timeouts), sum(aborts), "
        "CAST(sum(failures) AS Decimal128(6)) / sum(samples), max(p90_latency_ms) "
        "FROM v_integration_pain_points GROUP BY tool, surface ORDER BY tool, surface").result_rows
    assert pain == [("http_get", "AGENT", 1, 1, 0, 0, Decimal("1"), 900),
                    ("http_get", "IDE", 1, 0, 0, 1, Decimal("1"), 400),
                    ("sql", "AGENT", 3, 1, 1, 0, Decimal("0.666666"), 30_000)]
