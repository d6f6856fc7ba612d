"""The project's Kafka topics and their administration (creation, broker discovery)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from aiokafka import TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from deploy.kafka.launcher import LocalKafka
from streams.runtime.kafka_clients import KafkaClients, clients_for

if TYPE_CHECKING:
    from streams.settings import Settings

# The Kafka error code that means "someone else created it first" for a create request.
_TOPIC_ALREADY_EXISTS = 36


class Direction(StrEnum):
    INPUT = "input"
    OUTPUT = "output"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    direction: Direction
    purpose: str


INTERACTION_EVENTS = "interaction-events"
CREDIT_GRANTS = "credit-grants"
SUBSCRIPTION_CHANGES = "subscription-changes"
GAMING_REVIEWS = "gaming-reviews"
USAGE_ENRICHED = "usage-enriched"
GAMING_ALERTS = "gaming-alerts"
REFINEMENT_FEED = "refinement-feed"
DEAD_LETTERS = "dead-letters"
# Internal: the processor's repartition of fingerprint observations (created by the processor).
DETECTOR_FINGERPRINTS = "detector-fingerprints"

TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(INTERACTION_EVENTS, Direction.INPUT,
              "one Avro interaction event per model request, keyed by account id"),
    TopicSpec(CREDIT_GRANTS, Direction.INPUT, "grants issued, expired or revoked, keyed by account id"),
    TopicSpec(SUBSCRIPTION_CHANGES, Direction.INPUT, "plan changes of accounts, keyed by account id"),
    TopicSpec(GAMING_REVIEWS, Direction.INPUT, "fraud reviewers' verdicts on gaming alerts"),
    TopicSpec(USAGE_ENRICHED, Direction.OUTPUT,
              "metered events: category, list/charged/subsidy credits, priority, policy version"),
    TopicSpec(GAMING_ALERTS, Direction.OUTPUT, "deduplicated, explainable credit-gaming alerts"),
    TopicSpec(REFINEMENT_FEED, Direction.OUTPUT, "sampled requests for the model-refinement loop"),
    TopicSpec(DEAD_LETTERS, Direction.OUTPUT,
              "undecodable or invalid input with original bytes, headers, source offset, reason"),
)


def topic_names(settings: Settings) -> dict[str, str]:
    """Base name -> actual topic name (with the configured prefix)."""
    return {spec.name: settings.topic(spec.name) for spec in TOPICS}


def retention_ms(settings: Settings) -> int:
    return settings.retention_hours * 3600 * 1000


async def ensure_topics(bootstrap: KafkaClients | str, settings: Settings, timeout: float = 30) -> list[str]:
    """Create the project's topics that do not exist yet; return the names created.

    Idempotent: existing topics are left as they are (their partitions are never changed here,
    because adding partitions would move keys and break per-account state), and a topic created
    concurrently by another worker counts as existing.
    """
    admin = clients_for(bootstrap, settings).admin(request_timeout_ms=int(timeout * 1000))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [name for name in topic_names(settings).values() if name not in existing]
        if not wanted:
            return []
        configs = {"retention.ms": str(retention_ms(settings))}
        new = [NewTopic(name, settings.partitions, settings.replication_factor, topic_configs=configs)
               for name in wanted]
        response = await admin.create_topics(new, timeout_ms=int(timeout * 1000))
        created: list[str] = []
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            if code == 0:
                created.append(name)
            elif code != _TOPIC_ALREADY_EXISTS:
                message = entry[2] if len(entry) > 2 else ""
                raise for_code(code)(f"creating topic {name} failed: {message or code}")
        return sorted(created)
    finally:
        await admin.close()


async def create_topic(bootstrap: KafkaClients | str, name: str, partitions: int, replication: int,
                       configs: dict[str, str]) -> None:
    """Create one topic the project owns besides ``TOPICS`` (changelogs, the fingerprint repartition);
    a topic that exists already is left as it is."""
    admin = clients_for(bootstrap).admin()
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, replication, topic_configs=configs)])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


async def wait_for_broker(bootstrap: KafkaClients | str, timeout: float = 30) -> dict[str, object]:
    """Wait until the cluster answers a DescribeCluster/Metadata request; return its description."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        admin = clients_for(bootstrap).admin(request_timeout_ms=5000)
        try:
            await admin.start()
            description = await admin.describe_cluster()
            if description.get("brokers"):
                return dict(description)
        except (KafkaError, OSError) as exc:
            last_error = exc
        finally:
            await admin.close()
        await asyncio.sleep(0.5)
    raise TimeoutError(f"Kafka at {bootstrap} did not answer within {timeout:.0f}s: {last_error}")


def resolve_bootstrap(settings: Settings, timeout: float = 60) -> tuple[str, LocalKafka | None]:
    """The configured cluster if there is one, else the local broker under the data dir (started
    or reused). The LocalKafka is returned so the caller can stop a broker it owns."""
    if settings.kafka_bootstrap_servers:
        return settings.kafka_bootstrap_servers, None
    kafka = LocalKafka(settings.data_dir)
    return kafka.start(timeout=timeout), kafka


async def group_lag(bootstrap: KafkaClients | str, group: str, topics: Iterable[str]) -> int:
    """Records of ``topics`` not yet committed by ``group`` (every record when nothing is)."""
    clients = clients_for(bootstrap)
    admin = clients.admin()
    consumer = clients.consumer()
    await admin.start()
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # topics we never subscribed to
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        ends = await consumer.end_offsets(tps)
        committed = await admin.list_consumer_group_offsets(group)
        lag = 0
        for tp in tps:
            done = committed.get(tp)
            lag += ends[tp] - (done.offset if done is not None and done.offset >= 0 else 0)
        return lag
    finally:
        await consumer.stop()
        await admin.close()
