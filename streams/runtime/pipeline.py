"""Bringing a pipeline up: resolve the broker, create topics, migrate ClickHouse, build the app."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import faust

from deploy.kafka.launcher import LocalKafka
from sinks.client import connect
from sinks.migrations import apply_migrations
from streams.app import create_app
from streams.runtime.topics import ensure_topics, resolve_bootstrap
from streams.settings import Role, Settings


@dataclass
class Pipeline:
    app: faust.App
    bootstrap: str
    local_broker: LocalKafka | None


def prepare(settings: Settings, *, start_broker: bool = True) -> tuple[str, LocalKafka | None]:
    """Broker address (starting the local one when no cluster is configured), topics and tables."""
    if settings.kafka_bootstrap_servers or start_broker:
        bootstrap, broker = resolve_bootstrap(settings)
    else:
        raise RuntimeError("KAFKA_BOOTSTRAP_SERVERS is not set and starting a local broker was not allowed")
    asyncio.run(ensure_topics(bootstrap, settings))
    if settings.role in (Role.ALL, Role.SINK):
        apply_migrations(connect(settings.resolved_clickhouse_url), settings.events_ttl_days)
    return bootstrap, broker


def build(settings: Settings, bootstrap: str, broker: LocalKafka | None = None) -> Pipeline:
    return Pipeline(create_app(settings, bootstrap), bootstrap, broker)
