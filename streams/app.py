"""The one faust.App, and the roles it runs.

Faust runs the worker: its lifecycle, signals, logging and its web server (``streams/runtime/web.py``).
The work itself is done by two batch consumer services registered on the app, chosen by
``Settings.role``: ``all`` (default), ``processor`` (``streams/processor.py``) or ``sink``
(``sinks/service.py``). They are services, not Faust agents, because they need what agents hide:
batches, per-partition offsets and explicit commits (see ``docs/architecture.md``). State lives in
``streams/runtime/changelog.py`` tables, not Faust tables, so the app declares no agents or tables.
"""

from __future__ import annotations

import faust

from streams.runtime.gc_policy import tune_for_batches
from streams.runtime.kafka_clients import faust_broker_settings
from streams.runtime.kafka_log_limits import limit_kafka_logs
from streams.settings import Role, Settings


def create_app(settings: Settings, bootstrap: str) -> faust.App:
    from streams.runtime import leave_group, membership
    from streams.runtime.web import pick_port, register_web

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Static group membership by default, with the web port it names (see membership), and a static
    # member that still leaves its groups when stopped gracefully.
    settings = membership.settle(settings)
    leave_group.install()
    tune_for_batches()
    limit_kafka_logs(settings.kafka_log_interval_seconds)
    app = faust.App(
        settings.app_id,
        # Broker address, credentials and session timing, as every other client of the project has them.
        **faust_broker_settings(settings, bootstrap),
        # Agents receive raw bytes: the Avro codec decodes in batches and dead-letters what it cannot read.
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        datadir=str(settings.data_dir / "faust"),
        producer_acks=-1,
        producer_linger_ms=5,
        producer_max_batch_size=512 * 1024,
        producer_compression_type=settings.compression_type,
        consumer_auto_offset_reset="earliest",
        broker_commit_every=10_000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=max(4096, settings.process_batch * 2),
        # Health, metrics, balances and live SQL are routes on Faust's web server (streams/runtime/web.py).
        web_enabled=True,
        web_bind=settings.web_host,
        web_port=pick_port(settings),
    )
    from streams.processor import register_processor
    from streams.runtime.topics import topic_names

    names = topic_names(settings)
    register_web(app, settings)
    if settings.role in (Role.ALL, Role.PROCESSOR):
        register_processor(app, settings, bootstrap, names)
    if settings.role in (Role.ALL, Role.SINK):
        from sinks.service import register_sink

        sink = register_sink(app, settings, bootstrap, names)
        from sinks.sql_bridge import register_sql_bridge

        register_sql_bridge(app, settings, sink)
    return app
