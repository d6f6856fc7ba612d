"""SIGTERM while events flow: the batch in flight is finished and committed, and the worker leaves
its consumer group at once (its partitions do not wait for a session timeout to move)."""

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
from tests.integration.harness import Worker
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
        flowing.join(timeout=60)
    finally:
        worker.stop(timeout=30)
