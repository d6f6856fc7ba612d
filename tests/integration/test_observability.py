"""/metrics, /health and /ready of a real worker (processor, detectors and sink in one process) on
the real broker, scraped while the labelled scenarios flow through it together with undecodable
records: the counters follow what was produced (events metered, dead letters by kind, alerts by rule,
rows stored), lag is reported per partition and drains to zero, and the probes answer."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from sinks.client import close
from sinks.service import ClickHouseSink
from streams.runtime.topics import ensure_topics
from streams.settings import Settings
from streams.synthetic.scenarios import SCENARIO_RULE, ScenarioSet, build
from tests.integration.harness import Worker
from tests.integration.test_pipeline import _produce
from tests.integration.test_sink_outage import FlakyClickHouse, _produce_metered, _sink_setup
from tests.metered import metered

pytestmark = pytest.mark.integration
GARBAGE = 7
UNPRICED_MODEL = "nova-preview"  # not in the shipped policy's price table: metered at its '*' price
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def settings(topic_settings: Settings, tmp_path: Path) -> Settings:
    return topic_settings.model_copy(update={
        "clickhouse_url": f"chdb://{tmp_path / 'clickhouse'}",
        "sink_flush_seconds": 0.5,
        "process_batch": 500,
    })


@pytest.fixture
def worker(settings: Settings, tmp_path: Path) -> Iterator[Worker]:
    w = Worker(settings, "all", tmp_path, "all", CREDITFLOW_WEB_PORT=str(_free_port()),
               CREDITFLOW_DETECTOR_FLUSH_SECONDS="2")
    yield w
    w.stop(timeout=30)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            if url.endswith("/metrics"):
                assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _scrape(base: str) -> Samples:
    status, text = _get(f"{base}/metrics")
    assert status == 200, text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def _wait(what: str, worker: Worker, check: Any, timeout: float = 180, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        assert worker.alive, worker.log_tail()
        try:
            last = check()
        except (OSError, urllib.error.URLError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"{what} not reached in {timeout}s (last {last!r}):\n{worker.log_tail()}")


def _produce_garbage(settings: Settings, n: int) -> None:
    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        await producer.start()
        try:
            for i in range(n):
                await producer.send_and_wait(settings.topic("interaction-events"), b"not avro %d" % i,
                                             key=f"garbage-{i}".encode())
        finally:
            await producer.stop()

    asyncio.run(run())


def _unpriced_events(scenarios: ScenarioSet, n: int) -> list[dict[str, Any]]:
    """``n`` requests to a model the policy does not price, from accounts of their own (so no
    scenario's detection changes)."""
    template = scenarios.events[0]
    return [{**template, "event_id": f"unpriced-{i}", "account_id": f"unpriced-acct-{i % 3}",
             "model": UNPRICED_MODEL, "occurred_at": template["occurred_at"] + i * 1000} for i in range(n)]


@pytest.fixture(scope="module")
def scenarios() -> ScenarioSet:
    return build("small", seed=11)


def test_metrics_and_probes_follow_the_stream(settings: Settings, worker: Worker, scenarios: ScenarioSet) -> None:
    worker.start()
    base = f"http://127.0.0.1:{worker.env['CREDITFLOW_WEB_PORT']}"
    _wait("/health answering", worker, lambda: _get(f"{base}/health")[0] == 200)
    health = json.loads(_get(f"{base}/health")[1])
    assert health["status"] == "ok" and health["role"] == "all"
    # Ready once both groups (processor and sink) hold their partitions and ClickHouse answers.
    _wait("ready", worker, lambda: _get(f"{base}/ready")[0] == 200)
    ready = json.loads(_get(f"{base}/ready")[1])
    names = {c["name"] for c in ready["checks"]}
    assert {"clickhouse", f"{settings.app_id}-processor: assignment", f"{settings.app_id}-sink: progress"} <= names
    before = _scrape(base)
    assert value(before, "creditflow_events_metered_total") == 0
    processor = f"{settings.app_id}-processor"
    # Topic partitions: every partition of each input topic, as one worker holds them all.
    assert value(before, "creditflow_assigned_partitions", group=processor) >= settings.partitions
    assert value(before, "creditflow_rebalances_total", group=processor) >= 1

    _produce(settings, scenarios.grants, [])
    flowing = threading.Thread(target=_produce, args=(settings, [], scenarios.events), kwargs={"rate": 1500})
    flowing.start()
    try:
        _produce_garbage(settings, GARBAGE)
        # While events flow: ready stays up, counters only grow, and lag is reported per partition.
        seen: list[float] = []
        lag_series = 0
        while flowing.is_alive():
            assert _get(f"{base}/ready")[0] == 200, _get(f"{base}/ready")[1]
            now = _scrape(base)
            seen.append(value(now, "creditflow_events_consumed_total", group=processor))
            lag_series = max(lag_series, sum(1 for (n, ls) in now if n == "creditflow_consumer_lag"
                                             and ("group", processor) in ls))
            time.sleep(0.5)
    finally:
        flowing.join()
    assert seen == sorted(seen) and seen[-1] > seen[0], seen
    assert lag_series >= settings.partitions
    unpriced = _unpriced_events(scenarios, 9)
    _produce(settings, [], unpriced)

    total_in = len(scenarios.events) + GARBAGE + len(unpriced)
    events_topic = settings.topic("interaction-events")

    def settled() -> Samples | None:
        s = _scrape(base)
        in_ = value(s, "creditflow_events_consumed_total", group=processor, topic=events_topic)
        out = value(s, "creditflow_events_metered_total") + value(s, "creditflow_dead_letters_total")
        stored = value(s, "creditflow_sink_rows_total", table="events")
        lag = value(s, "creditflow_consumer_lag")
        return s if in_ == total_in and out == total_in and stored == value(
            s, "creditflow_events_metered_total") and lag == 0 else None

    final: Samples = _wait("every event metered, stored and committed", worker, settled, timeout=240, every=1.0)
    assert value(final, "creditflow_dead_letters_total", kind="BAD_MAGIC") == GARBAGE
    assert value(final, "creditflow_sink_rows_total", table="dead_letters") >= GARBAGE
    assert value(final, "creditflow_duplicates_skipped_total") == 0
    # Unpriced models are counted by model; the scenarios' priced models never appear.
    unpriced_series = {dict(ls)["model"]: v for (n, ls), v in final.items()
                       if n == "creditflow_unpriced_events_total"}
    assert unpriced_series == {UNPRICED_MODEL: len(unpriced)}, unpriced_series
    alerts = {dict(ls)["rule"]: v for (n, ls), v in final.items() if n == "creditflow_alerts_total" and v}
    assert alerts and set(alerts) <= set(SCENARIO_RULE.values()) | {f"CF-{i:03d}" for i in range(1, 20)}, alerts
    assert value(final, "creditflow_sink_rows_total", table="gaming_alerts") >= 1
    for histogram in ("creditflow_batch_duration_seconds", "creditflow_publish_duration_seconds",
                      "creditflow_state_write_duration_seconds", "creditflow_sink_store_duration_seconds"):
        assert value(final, f"{histogram}_count") > 0, histogram
    assert value(final, "creditflow_state_keys", tier="hot") > 0
    assert value(final, "creditflow_sink_failing") == 0 and value(final, "creditflow_ready") == 1
    assert value(final, "process_start_time_seconds") > 0
    assert _get(f"{base}/ready")[0] == 200
    print(f"\nmetered {value(final, 'creditflow_events_metered_total'):.0f}, dead letters "
          f"{value(final, 'creditflow_dead_letters_total'):.0f}, alerts {sum(alerts.values()):.0f} over "
          f"{len(alerts)} rules, events stored {value(final, 'creditflow_sink_rows_total', table='events'):.0f}")


class _PingableFlaky(FlakyClickHouse):
    def ping(self) -> bool:
        return not self.down


def test_sink_readiness_and_metrics_through_a_clickhouse_outage(topic_settings: Settings, tmp_path: Path) -> None:
    """While ClickHouse is away the sink is not ready (and says why), retries are counted and
    nothing is committed; once it is back the sink is ready, the rows are counted and lag drains."""
    from streams.runtime.health import Health

    settings, bootstrap, url, names, _tps = _sink_setup(topic_settings, tmp_path, sink_flush_seconds=0.3,
                                                        sink_batch_rows=500)
    records = metered(1_500, accounts=20, seed=5, prefix="ready", partitions=3)

    async def scenario() -> None:
        # The topics exist before the sink subscribes: it is assigned their partitions at once.
        await ensure_topics(bootstrap, settings)
        flaky = _PingableFlaky(url)
        flaky.down = False
        sink = ClickHouseSink(settings, bootstrap, names, client_factory=lambda: flaky)
        health = Health(settings, sink.metrics)
        health.ping = sink.ping
        sink.metrics.watch(sink.group, lambda: sink.consumer)
        await sink.start()
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not ((await health.readiness())[0]
                                                       and sink.metrics.groups[sink.group].assigned):
                await asyncio.sleep(0.2)
            ok, body = await health.readiness()
            assert ok and sink.metrics.groups[sink.group].assigned, body
            # ClickHouse goes away under the running sink, and records arrive.
            flaky.down = True
            await _produce_metered(settings, records, stamped=True)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not sink.metrics.sink_error:
                await asyncio.sleep(0.2)
            ok, body = await health.readiness()
            assert not ok, body
            check = next(c for c in body["checks"] if c["name"] == "clickhouse")
            assert "failing, retrying" in check["detail"] and "simulated outage" in check["detail"]
            outage = _parse(await _exposition(sink))
            assert value(outage, "creditflow_sink_failing") == 1 and value(outage, "creditflow_sink_retries_total") >= 1
            assert value(outage, "creditflow_sink_rows_total") == 0

            flaky.down = False
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                s = _parse(await _exposition(sink))
                if value(s, "creditflow_sink_rows_total", table="events") == len(records) and \
                        value(s, "creditflow_consumer_lag") == 0 and (await health.readiness())[0]:
                    break
                await asyncio.sleep(0.5)
            ok, body = await health.readiness()
            assert ok, body
            s = _parse(await _exposition(sink))
            assert value(s, "creditflow_sink_rows_total", table="events") == len(records)
            assert value(s, "creditflow_sink_failing") == 0 and value(s, "creditflow_consumer_lag") == 0
            assert value(s, "creditflow_events_consumed_total", group=sink.group) >= len(records)
        finally:
            await sink.stop()

    try:
        asyncio.run(scenario())
    finally:
        close(url)


async def _exposition(sink: ClickHouseSink) -> str:
    await sink.metrics.refresh()
    return sink.metrics.exposition().decode()


def _parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}
