"""SIGTERM while events flow: the batch in flight is finished and committed, and the worker leaves
its consumer groups at once (its partitions do not wait for a session timeout to move), although a
worker is a static group member by default (a static member is only removed by an explicit LeaveGroup
v3, ``streams/runtime/leave_group.py``)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from streams.runtime.kafka_clients import KafkaClients
from streams.runtime.topics import ensure_topics
from streams.settings import Settings
from tests.integration.harness import Worker, wait_processors_own
from tests.integration.test_pipeline import _produce, _wait_grants_applied, _workload

pytestmark = pytest.mark.integration


async def _progress(settings: Settings) -> tuple[int, int, list[object]]:
    """(inputs committed by the processors, usage-enriched records published, group members)."""
    clients = KafkaClients(settings)
    admin, consumer = clients.admin(), clients.consumer()
    await admin.start()
    await consumer.start()
    try:
        group = f"{settings.app_id}-processor"
        committed = await admin.list_consumer_group_offsets(group)
        inputs = sum(o.offset for tp, o in committed.items()
                     if tp.topic == settings.topic("interaction-events") and o.offset >= 0)
        out = settings.topic("usage-enriched")
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(out, p) for p in sorted(consumer.partitions_for_topic(out) or ())]
        published = sum((await consumer.end_offsets(tps)).values())
        described = await admin.describe_consumer_groups([group])
        members = list(described[0].groups[0][-1]) if described and described[0].groups else []
        return inputs, published, members
    finally:
        await consumer.stop()
        await admin.close()


async def _members(settings: Settings, group: str) -> int:
    admin = KafkaClients(settings).admin()
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([group])
        return len(described[0].groups[0][-1]) if described and described[0].groups else 0
    finally:
        await admin.close()


def test_sigterm_drains_commits_and_leaves(topic_settings: Settings, tmp_path: Path) -> None:
    settings = topic_settings.model_copy(update={"process_batch": 2_000})
    _gen, grants, events = _workload(100, 30_000, 29, "term")
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers or "", settings))
    worker = Worker(settings, "processor", tmp_path, "term").start()
    try:
        _produce(settings, grants, [])
        _wait_grants_applied(settings, worker)
        flowing = threading.Thread(target=_produce, args=(settings, [], events, 3_000.0), daemon=True)
        flowing.start()
        time.sleep(5.0)
        assert worker.stop() == 0, worker.log_tail()
        stopped_at = time.monotonic()
        log = worker.log_path.read_text(errors="replace")
        assert "interrupted by shutdown" not in log and "did not finish" not in log, worker.log_tail()
        inputs, published, members = asyncio.run(_progress(settings))
        # Every event published downstream was committed upstream: nothing is left to replay.
        assert inputs == published > 0
        # Left the group, rather than being dropped after the session timeout.
        assert members == [] and time.monotonic() - stopped_at < settings.kafka_session_timeout_ms / 1000
        # Faust's own consumer (the app id's group) left too.
        assert asyncio.run(_members(settings, settings.app_id)) == 0
        flowing.join(timeout=60)
    finally:
        worker.stop(timeout=30)


def test_sigterm_hands_partitions_to_the_other_worker_at_once(topic_settings: Settings, tmp_path: Path) -> None:
    """Two processors on one host and data dir (each takes its own seat, so its own static id); the
    one SIGTERMed leaves, and the other owns every partition well before a session timeout."""
    settings = topic_settings.model_copy(update={"process_batch": 2_000})
    _gen, grants, events = _workload(100, 20_000, 31, "hand")
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers or "", settings))
    first = Worker(settings, "processor", tmp_path, "hand-1").start()
    second = Worker(settings, "processor", tmp_path, "hand-2").start()
    try:
        _produce(settings, grants, [])
        # Both in the group, sharing the partitions: two distinct default ids (one would fence the other).
        wait_processors_own(settings, 2)
        flowing = threading.Thread(target=_produce, args=(settings, [], events, 2_000.0), daemon=True)
        flowing.start()
        time.sleep(3.0)
        signalled = time.monotonic()
        assert first.stop() == 0, first.log_tail()
        stopped_at = time.monotonic()
        wait_processors_own(settings, 1, timeout=60)
        took = time.monotonic() - stopped_at
        print(f"SIGTERM hand-over: the other worker owned every partition {took:.1f}s after the stopped "
              f"worker exited ({time.monotonic() - signalled:.1f}s after SIGTERM)")
        # Without the explicit leave a static member's partitions wait for its session to expire
        # (measured 8.4s after the exit with the default 10s session).
        bound = settings.kafka_session_timeout_ms / 2000
        assert took < bound, f"hand-over took {took:.1f}s after the exit (bound {bound:.0f}s)"
        assert asyncio.run(_members(settings, settings.app_id)) == 1
        assert second.alive, second.log_tail()
        flowing.join(timeout=60)
    finally:
        first.stop(timeout=30)
        second.stop(timeout=30)
