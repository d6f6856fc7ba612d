"""Dead letters of the topics only the sink reads (``subscription-changes``, ``gaming-reviews``), against
the real broker and ClickHouse engine: they are on the ``dead-letters`` topic like the processor's, so
``creditflow dead-letters list|replay`` sees them and a replay after the fix lands each change once.
A replay run that aborted is never stored: the sink reads committed records only, as the processor does."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from schemas.catalogue import get_catalogue
from streams.runtime.topics import ensure_topics
from streams.settings import Settings
from streams.wire.codec import encode_confluent, encode_single_object
from tests.fake_registry import FakeRegistry
from tests.integration.faults.intake_support import (  # noqa: F401  (fixtures)
    Raw,
    partition_lag,
    query,
    send_raw,
    settings,
    wait_until,
)
from tests.integration.harness import REPO, Worker

pytestmark = pytest.mark.integration

LATE_ID = 7_171  # the id a service wrote before anyone registered the schema under it


def _cli(worker: Worker, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "streams.cli.main", "dead-letters", *args], cwd=REPO,
                          env=worker.environment(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _change(i: int, prefix: str) -> dict[str, object]:
    return {"change_id": f"{prefix}-{i}", "account_id": f"{prefix}-acct-{i % 7}", "change": "UPGRADE",
            "from_plan": "FREE", "to_plan": "PRO", "occurred_at": 1_793_000_000_000 + i}


def _tail(settings: Settings,  # noqa: F811
          prefix: str, good: list[dict[str, object]]) -> list[Raw]:
    """A valid change on every partition, after any transaction marker there: a consumer is never
    handed a marker, so the sink's committed offsets reach the end of a partition only past a record."""
    tail = [_change(p, prefix) for p in range(settings.partitions)]
    good.extend(tail)
    return [(str(c["account_id"]).encode(), encode_single_object(c, "SubscriptionChange"), [], p)
            for p, c in enumerate(tail)]


def _send_aborted(settings: Settings, topic: str, value: bytes) -> None:  # noqa: F811
    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                    transactional_id=f"{settings.app_id}-aborted", acks="all")
        await producer.start()
        try:
            await producer.begin_transaction()
            await producer.send_and_wait(topic, value, key=b"aborted")
            await producer.abort_transaction()
        finally:
            await producer.stop()

    asyncio.run(run())


def test_sink_dead_letters_are_listed_replayed_once_and_aborted_records_never_stored(
        settings: Settings, workers: list[Worker], registry: FakeRegistry, tmp_path: Path) -> None:  # noqa: F811
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers or "", settings))
    sv = get_catalogue().latest("SubscriptionChange")
    good = [_change(i, "ok") for i in range(40)]
    late = [_change(i, "late") for i in range(9)]
    env = {"SCHEMA_REGISTRY_URL": registry.url, "CREDITFLOW_REGISTRY_NOT_FOUND_TTL_SECONDS": "1"}
    sink = Worker(settings, "sink", tmp_path, "sink", **env).start()
    workers.append(sink)
    topic = settings.topic("subscription-changes")
    _send_aborted(settings, topic, encode_single_object({**_change(0, "aborted"), "account_id": "aborted"},
                                                        "SubscriptionChange"))
    records: list[Raw] = [(str(c["account_id"]).encode(), encode_single_object(c, "SubscriptionChange"), [], None)
                          for c in good]
    for i, c in enumerate(late):
        records.insert(i * 4, (str(c["account_id"]).encode(), encode_confluent(c, LATE_ID, sv.parsed),
                               [("origin", b"billing")], None))
    records.append((b"junk", b"\x00\x00\x00\x00", [], None))  # too short for the Confluent header
    send_raw(settings, "subscription-changes", records + _tail(settings, "first", good))

    group = f"{settings.app_id}-sink"

    def drained() -> bool:
        return all(sum(partition_lag(settings, group, settings.topic(t)).values()) == 0
                   for t in ("subscription-changes", "dead-letters"))

    wait_until("the sink stored the changes and its dead letters", drained, workers)
    listed = [json.loads(line) for line in _cli(sink, "list", "--json", "--topic", "subscription-changes",
                                                "--limit", "1000").splitlines()]
    assert sorted(d["error_kind"] for d in listed) == ["TRUNCATED"] + ["UNKNOWN_SCHEMA"] * len(late), listed
    assert not any(d["replayed"] for d in listed)

    registry.schemas[LATE_ID] = json.dumps(sv.schema_json)  # the fix: the schema is registered
    time.sleep(1.5)  # past the sink's memory of "not found"
    args = ("replay", "--kind", "UNKNOWN_SCHEMA", "--topic", "subscription-changes")
    assert f"replayed {len(late)} dead letter(s)" in _cli(sink, *args)
    assert "replayed 0 dead letter(s)" in _cli(sink, *args)
    send_raw(settings, "subscription-changes", _tail(settings, "second", good))
    wait_until("the replayed changes stored", drained, workers)
    assert sink.stop() == 0, sink.log_tail()

    want = sorted(str(c["change_id"]) for c in good + late)
    assert sorted(r[0] for r in query(settings, "SELECT change_id FROM subscription_changes FINAL")) == want
    assert query(settings, "SELECT count() FROM subscription_changes WHERE account_id = 'aborted'") == [(0,)]
    kinds = query(settings, "SELECT error_kind, count() FROM dead_letters FINAL GROUP BY error_kind ORDER BY 1")
    assert kinds == [("TRUNCATED", 1), ("UNKNOWN_SCHEMA", len(late))]
