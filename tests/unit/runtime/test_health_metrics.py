"""The pure parts of metrics and probes: one registry per app, names by the Prometheus conventions,
per-batch reporting, and the readiness decision."""

from __future__ import annotations

from typing import Any, NamedTuple

from prometheus_client.parser import text_string_to_metric_families

from streams.runtime.health import clickhouse_check, group_checks
from streams.runtime.metrics import GroupProgress, Metrics


class TP(NamedTuple):
    topic: str
    partition: int


def _samples(m: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(m.exposition().decode()) for s in f.samples}


def test_each_metrics_object_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.events_metered.inc(3)
    assert _samples(a)[("creditflow_events_metered_total", frozenset())] == 3
    assert _samples(b)[("creditflow_events_metered_total", frozenset())] == 0


def test_names_follow_prometheus_conventions() -> None:
    families = list(text_string_to_metric_families(Metrics().exposition().decode()))
    ours = [f for f in families if f.name.startswith("creditflow_")]
    assert len(ours) >= 20
    for f in ours:
        assert f.name == f.name.lower() and "__" not in f.name
        if f.type == "histogram":
            assert f.name.endswith(("_seconds", "_events")), f.name
    names = {f.name for f in ours}
    assert {"creditflow_events_consumed", "creditflow_dead_letters", "creditflow_alerts", "creditflow_consumer_lag",
            "creditflow_sink_rows", "creditflow_rebalances", "creditflow_batch_duration_seconds",
            "creditflow_sink_store_duration_seconds", "creditflow_state_keys"} <= names
    assert "process_start_time_seconds" in {s.name for f in families for s in f.samples}


def test_a_processor_batch_counts_by_kind_rule_and_severity() -> None:
    m = Metrics()
    m.consumed("g", {TP("events", 0): [1, 2, 3], TP("events", 1): [4], TP("grants", 0): [5]})
    dead: list[dict[str, Any]] = [{"error_kind": k} for k in ("BAD_MAGIC", "BAD_MAGIC", "VALIDATION")]
    alerts = [("a", {"rule_id": "CF-002", "severity": "HIGH"}), ("b", {"rule_id": "CF-002", "severity": "HIGH"}),
              ("c", {"rule_id": "CF-011", "severity": "LOW"})]
    m.processor_batch(events=4, metered=1, skipped=2, dead=dead, alerts=alerts, started=0.0,
                      write_phases=(0.125, 0.375, 0.125, 0.125))
    s = _samples(m)
    assert s[("creditflow_events_consumed_total", frozenset({("group", "g"), ("topic", "events")}))] == 4
    assert s[("creditflow_dead_letters_total", frozenset({("kind", "BAD_MAGIC")}))] == 2
    assert s[("creditflow_alerts_total", frozenset({("rule", "CF-002"), ("severity", "HIGH")}))] == 2
    assert s[("creditflow_duplicates_skipped_total", frozenset())] == 2
    assert s[("creditflow_publish_duration_seconds_sum", frozenset())] == 0.5
    assert s[("creditflow_state_write_duration_seconds_sum", frozenset())] == 0.25


def test_unpriced_events_are_counted_by_model_once_the_batch_is_written() -> None:
    m = Metrics()
    batch = {"events": 3, "metered": 3, "skipped": 0, "dead": [], "alerts": [], "started": 0.0,
             "write_phases": ()}
    m.processor_batch(**batch)
    text = m.exposition().decode()
    assert "# TYPE creditflow_unpriced_events_total counter" in text  # declared before any traffic
    assert "creditflow_unpriced_events_total{" not in text
    m.processor_batch(**batch, unpriced={"nova-preview": 2, "atlas-xl": 1})
    m.processor_batch(**batch, unpriced={"nova-preview": 1})
    s = _samples(m)
    assert s[("creditflow_unpriced_events_total", frozenset({("model", "nova-preview")}))] == 3
    assert s[("creditflow_unpriced_events_total", frozenset({("model", "atlas-xl")}))] == 1
    assert 'creditflow_unpriced_events_total{model="nova-preview"} 3.0' in m.exposition().decode()


def test_unpriced_models_past_the_cap_share_one_series() -> None:
    from streams.runtime.metrics import UNPRICED_MODELS_MAX, UNPRICED_OTHER

    m = Metrics()
    batch = {"events": 1, "metered": 1, "skipped": 0, "dead": [], "alerts": [], "started": 0.0,
             "write_phases": ()}
    for i in range(UNPRICED_MODELS_MAX + 5):
        m.processor_batch(**batch, unpriced={f"m-{i}": 1})
    m.processor_batch(**batch, unpriced={"m-0": 1})  # a model already shown keeps its series
    s = _samples(m)
    series = {dict(ls)["model"]: v for (n, ls), v in s.items() if n == "creditflow_unpriced_events_total"}
    assert len(series) == UNPRICED_MODELS_MAX + 1
    assert series[UNPRICED_OTHER] == 5 and series["m-0"] == 2
    assert sum(series.values()) == UNPRICED_MODELS_MAX + 6


def test_sink_stores_and_failures() -> None:
    m = Metrics()
    m.sink_failed(RuntimeError("Code: 210. connection refused\nstack"))
    assert m.sink_error == "Code: 210. connection refused"
    m.sink_stored({"events": 10, "credit_ledger": 4, "replays dropped": 3, "direct batches": 1}, 0.2)
    s = _samples(m)
    assert s[("creditflow_sink_rows_total", frozenset({("table", "events")}))] == 10
    assert s[("creditflow_sink_replays_dropped_total", frozenset())] == 3
    assert ("creditflow_sink_rows_total", frozenset({("table", "direct batches")})) not in s
    assert s[("creditflow_sink_retries_total", frozenset())] == 1 and s[("creditflow_sink_failing", frozenset())] == 0
    assert m.sink_error == ""


def test_assignment_and_commits_feed_readiness() -> None:
    m = Metrics()
    m.watch("g", lambda: None)
    assert [c.ok for c in group_checks(m.groups, 100.0, 0.0, 60)] == [False]
    m.assigned("g", [TP("t", 0), TP("t", 1)])
    m.committed("g", {TP("t", 0): 5})
    checks = group_checks(m.groups, m.groups["g"].last_batch + 1, 0.0, 60)
    assert [c.ok for c in checks] == [True, True] and "2 partitions" in checks[0].detail
    m.assigned("g", [TP("t", 1)])
    assert m.groups["g"].committed == {}  # offsets of partitions that moved away are forgotten
    s = _samples(m)
    assert s[("creditflow_rebalances_total", frozenset({("group", "g")}))] == 2
    assert s[("creditflow_assigned_partitions", frozenset({("group", "g")}))] == 1


def test_a_stalled_or_idle_group() -> None:
    stalled = {"g": GroupProgress(assigned=frozenset({("t", 0)}), last_poll=10.0, last_batch=5.0)}
    checks = group_checks(stalled, 200.0, 0.0, 60)
    assert checks[1].ok is False and "190.0s ago" in checks[1].detail
    idle = {"g": GroupProgress(assigned=frozenset(), last_poll=199.0)}
    assert all(c.ok for c in group_checks(idle, 200.0, 0.0, 60))


def test_clickhouse_check() -> None:
    assert clickhouse_check(False, "", True).ok
    assert not clickhouse_check(False, "", False).ok
    assert not clickhouse_check(False, "", None).ok
    failing = clickhouse_check(True, "Code: 210", True)
    assert not failing.ok and "Code: 210" in failing.detail


class _Consumer:
    def __init__(self, held: set[TP], ends: dict[TP, int], positions: dict[TP, int]) -> None:
        self.held, self.ends, self.positions = held, ends, positions

    def assignment(self) -> set[TP]:
        return self.held

    async def end_offsets(self, partitions: list[TP]) -> dict[TP, int]:
        return {tp: self.ends[tp] for tp in partitions}

    async def position(self, tp: TP) -> int:
        return self.positions[tp]


def test_lag_is_end_minus_committed_else_position_and_follows_the_assignment() -> None:
    import asyncio

    m = Metrics()
    consumer = _Consumer({TP("t", 0), TP("t", 1)}, {TP("t", 0): 100, TP("t", 1): 50}, {TP("t", 1): 45})
    m.watch("g", lambda: consumer)
    m.assigned("g", consumer.held)
    m.committed("g", {TP("t", 0): 90})
    asyncio.run(m.refresh())
    lag = {dict(ls)["partition"]: v for (n, ls), v in _samples(m).items() if n == "creditflow_consumer_lag"}
    assert lag == {"0": 10, "1": 5}
    consumer.held = {TP("t", 1)}
    asyncio.run(m.refresh())
    lag = {dict(ls)["partition"]: v for (n, ls), v in _samples(m).items() if n == "creditflow_consumer_lag"}
    assert lag == {"1": 5}


def test_readiness_pings_clickhouse_only_without_a_recent_store() -> None:
    import asyncio

    from streams.runtime.health import Health
    from streams.settings import Settings

    pings: list[bool] = []

    async def ping() -> bool:
        pings.append(True)
        return answer

    metrics = Metrics()
    health = Health(Settings(), metrics)
    health.ping = ping
    metrics.watch("g", lambda: None)
    metrics.assigned("g", [TP("t", 0)])
    metrics.committed("g", {TP("t", 0): 1})
    answer = False
    ok, body = asyncio.run(health.readiness())
    assert not ok and body["checks"][-1] == {"name": "clickhouse", "ok": False, "detail": "ping failed"}
    metrics.sink_stored({"events": 1}, 0.1)
    health._pinged = (-1e9, None)  # the cached answer expired
    ok, _ = asyncio.run(health.readiness())
    assert ok and len(pings) == 1, "a store a moment ago answers for ClickHouse"
    metrics.sink_failed(ConnectionError("refused"))
    ok, body = asyncio.run(health.readiness())
    assert not ok and "failing, retrying: refused" in body["checks"][-1]["detail"] and len(pings) == 1
