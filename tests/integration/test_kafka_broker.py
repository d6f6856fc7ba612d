"""Against the real broker: topic administration, consumer groups, commits and rebalancing, and the
local launcher's lifecycle."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from deploy.kafka.launcher import KafkaLaunchError, LocalKafka, is_kafka_process, metadata_probe
from streams.runtime.topics import INTERACTION_EVENTS, TOPICS, ensure_topics, topic_names, wait_for_broker
from streams.settings import Settings

pytestmark = pytest.mark.integration

PARTITIONS = 6
# Fast group membership so rebalances take about a second, not the 3 s default heartbeat.
GROUP_OPTS = {
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "heartbeat_interval_ms": 300,
    "session_timeout_ms": 6000,
    "metadata_max_age_ms": 1000,
}


async def _produce(bootstrap: str, topic: str, per_partition: int, tag: str) -> dict[int, list[bytes]]:
    """Send ``per_partition`` keyed messages to every partition; return the values per partition."""
    sent: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for i in range(per_partition):
            for p in range(PARTITIONS):
                value = f"{tag}-{p}-{i}".encode()
                await producer.send(topic, value, key=f"acct-{p}".encode(), partition=p)
                sent[p].append(value)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def _poll_until(
    consumers: list[AIOKafkaConsumer],
    done: Callable[[], bool],
    on_batch: Callable[[AIOKafkaConsumer, list[ConsumerRecord[bytes, bytes]]], Awaitable[None]] | None = None,
    timeout: float = 30,
) -> None:
    """Drive every consumer's fetch loop (which also drives its group membership) until ``done``."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out waiting for the consumer group"
        for consumer in consumers:
            batches = await consumer.getmany(timeout_ms=100)
            records = [r for batch in batches.values() for r in batch]
            if records and on_batch is not None:
                await on_batch(consumer, records)


def test_wait_for_broker_describes_cluster(kafka_bootstrap: str) -> None:
    description = asyncio.run(wait_for_broker(kafka_bootstrap, timeout=30))
    assert len(description["brokers"]) == 1  # type: ignore[arg-type]


def test_ensure_topics_creates_all_with_partitions_and_retention(topic_settings: Settings) -> None:
    bootstrap = topic_settings.kafka_bootstrap_servers
    assert bootstrap

    async def scenario() -> None:
        created = await ensure_topics(bootstrap, topic_settings)
        names = topic_names(topic_settings)
        assert sorted(created) == sorted(names.values())
        assert len(names) == len(TOPICS) == 10
        # Second call is a no-op, not an error.
        assert await ensure_topics(bootstrap, topic_settings) == []

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics(list(names.values()))
            assert {t["topic"] for t in described} == set(names.values())
            for topic in described:
                assert topic["error_code"] == 0
                assert len(topic["partitions"]) == topic_settings.partitions
                replicas = {len(p["replicas"]) for p in topic["partitions"]}
                assert replicas == {topic_settings.replication_factor}
            resources = [
                ConfigResource(ConfigResourceType.TOPIC, n, {"retention.ms": None, "cleanup.policy": None})
                for n in names.values()
            ]
            responses = await admin.describe_configs(resources)
            configs = {
                resource[3]: {entry[0]: entry[1] for entry in resource[4]}
                for response in responses
                for resource in response.resources
            }
            expected = str(topic_settings.retention_hours * 3600 * 1000)
            compacted = {names[spec.name] for spec in TOPICS if spec.compacted}
            assert compacted == {names["credit-balances"]}
            assert {n: c["cleanup.policy"] for n, c in configs.items()} == {
                n: "compact" if n in compacted else "delete" for n in names.values()}
            assert {n: c["retention.ms"] for n, c in configs.items() if n not in compacted} == dict.fromkeys(
                set(names.values()) - compacted, expected)
        finally:
            await admin.close()

    asyncio.run(scenario())


def test_produce_consume_commit_resume(topic_settings: Settings) -> None:
    bootstrap = topic_settings.kafka_bootstrap_servers
    assert bootstrap
    topic = topic_settings.topic(INTERACTION_EVENTS)
    group = f"{topic_settings.app_id}-resume"

    async def consume_all(expected: int) -> list[bytes]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, **GROUP_OPTS)
        await consumer.start()
        got: list[bytes] = []
        try:
            async def take(c: AIOKafkaConsumer, records: list[ConsumerRecord[bytes, bytes]]) -> None:
                got.extend(r.value for r in records if r.value is not None)
                await c.commit()

            await _poll_until([consumer], lambda: len(got) >= expected, take)
            # Nothing beyond what was produced arrives (no duplicates hiding behind the count).
            extra = await consumer.getmany(timeout_ms=500)
            assert not any(extra.values())
        finally:
            await consumer.stop()
        return got

    async def scenario() -> None:
        await ensure_topics(bootstrap, topic_settings)
        first = await _produce(bootstrap, topic, per_partition=5, tag="a")
        got = await consume_all(30)
        assert sorted(got) == sorted(v for vs in first.values() for v in vs)

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        assert {tp.partition: meta.offset for tp, meta in offsets.items()} == dict.fromkeys(range(6), 5)

        # A restarted member of the group resumes at the commit: only the new messages arrive.
        second = await _produce(bootstrap, topic, per_partition=2, tag="b")
        got = await consume_all(12)
        assert sorted(got) == sorted(v for vs in second.values() for v in vs)

    asyncio.run(scenario())


def test_rebalance_splits_partitions_and_hands_over_at_committed_offsets(topic_settings: Settings) -> None:
    bootstrap = topic_settings.kafka_bootstrap_servers
    assert bootstrap
    topic = topic_settings.topic(INTERACTION_EVENTS)
    group = f"{topic_settings.app_id}-rebalance"
    per_partition = 10
    # The second member "processes" only the first 7 messages of each of its partitions before
    # it leaves; the 3 it fetched but never committed must be redelivered to the survivor.
    processed_by_leaver = 7

    async def scenario() -> None:
        await ensure_topics(bootstrap, topic_settings)
        c1, c2 = (
            AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, client_id=name, **GROUP_OPTS)
            for name in ("c1", "c2")
        )
        await c1.start()
        await c2.start()
        c2_stopped = False
        try:
            # 1. Two members split the six partitions (before any data, so nothing is fetched twice).
            await _poll_until([c1, c2], lambda: len(c1.assignment()) + len(c2.assignment()) == PARTITIONS
                              and bool(c1.assignment()) and bool(c2.assignment())
                              and not (c1.assignment() & c2.assignment()))
            a1 = {tp.partition for tp in c1.assignment()}
            a2 = {tp.partition for tp in c2.assignment()}
            assert len(a1) == len(a2) == 3
            assert a1 | a2 == set(range(PARTITIONS))

            # 2. Both consume; c1 commits everything it reads, c2 only its first 7 per partition.
            sent = await _produce(bootstrap, topic, per_partition=per_partition, tag="p1")
            seen: dict[str, list[ConsumerRecord[bytes, bytes]]] = {"c1": [], "c2": []}

            async def take(c: AIOKafkaConsumer, records: list[ConsumerRecord[bytes, bytes]]) -> None:
                if c is c1:
                    seen["c1"].extend(records)
                    await c.commit()
                else:
                    seen["c2"].extend(records)

            total = PARTITIONS * per_partition
            await _poll_until([c1, c2], lambda: len(seen["c1"]) + len(seen["c2"]) >= total, take)
            assert {r.partition for r in seen["c1"]} == a1
            assert {r.partition for r in seen["c2"]} == a2
            await c2.commit({TopicPartition(topic, p): processed_by_leaver for p in a2})
            await c2.stop()  # sends LeaveGroup: the survivor rebalances right away
            c2_stopped = True

            # 3. The survivor takes over all six partitions ...
            before = len(seen["c1"])
            await _poll_until([c1], lambda: len(c1.assignment()) == PARTITIONS, take)
            # ... and continues: new data on every partition plus c2's uncommitted tail.
            more = await _produce(bootstrap, topic, per_partition=2, tag="p2")
            handed_over = [v for p in sorted(a2) for v in sent[p][processed_by_leaver:]]
            expected_new = handed_over + [v for vs in more.values() for v in vs]
            await _poll_until([c1], lambda: len(seen["c1"]) - before >= len(expected_new), take)
            extra = await c1.getmany(timeout_ms=500)
            assert not any(extra.values())

            after = seen["c1"][before:]
            assert sorted(r.value for r in after if r.value is not None) == sorted(expected_new)
            # Nothing before c2's commit was re-read, nothing after it was lost.
            for p in a2:
                offsets = sorted(r.offset for r in after if r.partition == p)
                assert offsets == list(range(processed_by_leaver, per_partition + 2))
            # Every message produced was processed (c2's processed part + everything c1 saw).
            processed = [r.value for r in seen["c1"]] + [
                r.value for r in seen["c2"] if r.offset < processed_by_leaver
            ]
            assert sorted(v for v in processed if v is not None) == sorted(
                [v for vs in sent.values() for v in vs] + [v for vs in more.values() for v in vs]
            )
        finally:
            await c1.stop()
            if not c2_stopped:
                await c2.stop()

    asyncio.run(scenario())


def test_launcher_start_status_reuse_stop(tmp_path: Path) -> None:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("an external cluster is configured; the local launcher is not used")
    data_dir = tmp_path / f"lk-{uuid.uuid4().hex[:6]}"
    broker = LocalKafka(data_dir)
    try:
        t0 = time.monotonic()
        bootstrap = broker.start(timeout=90)
        startup = time.monotonic() - t0
        assert not broker.reused
        assert metadata_probe(bootstrap)
        assert asyncio.run(wait_for_broker(bootstrap, timeout=10))["brokers"]
        print(f"broker start took {startup:.1f}s")

        status = broker.status()
        assert status is not None and status.alive and status.bootstrap == bootstrap
        pid = status.pid
        assert is_kafka_process(pid, broker.properties_file)
        assert (data_dir / "kafka" / "broker.json").exists()

        # A second launcher (another process, the CLI) finds and reuses the live broker.
        other = LocalKafka(data_dir)
        assert other.start() == bootstrap
        assert other.reused
        status2 = other.status()
        assert status2 is not None and status2.pid == pid

        assert broker.stop()
        assert not Path(f"/proc/{pid}").exists()
        assert broker.status() is None
        assert not metadata_probe(bootstrap, timeout=0.5)
        assert not broker.stop()  # stopping twice is harmless

        # Restart on the same data dir: the formatted storage is reused and it comes back.
        bootstrap2 = broker.start(timeout=90)
        assert not broker.reused
        assert metadata_probe(bootstrap2)
    finally:
        broker.stop()
    assert broker.status() is None


def test_launcher_timeout_kills_the_broker_and_reports_the_log(tmp_path: Path) -> None:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("an external cluster is configured; the local launcher is not used")
    broker = LocalKafka(tmp_path / "slow")
    with pytest.raises(KafkaLaunchError, match="did not answer") as info:
        broker.start(timeout=0.5)
    assert "last log lines" in str(info.value)
    assert broker.status() is None
    assert not any(is_kafka_process(int(p.name), broker.properties_file)
                   for p in Path("/proc").iterdir() if p.name.isdigit())
