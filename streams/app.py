"""The one faust.App, and the roles it runs.

Topics and tables are declared next to the agents that own them (``streams/agents.py``); which agents
and services a worker runs follows ``Settings.role``: ``all`` (default), ``processor`` or ``sink``.
"""

from __future__ import annotations

import faust

from streams.runtime.gc_policy import tune_for_batches
from streams.settings import Role, Settings


def create_app(settings: Settings, bootstrap: str) -> faust.App:
    from streams.runtime.web import pick_port, register_web

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    tune_for_batches()
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{bootstrap}",
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
        # A crashed worker's partitions move after this long; Faust's 60 s default stalls recovery.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        table_standby_replicas=0,
        # Recovery must replay the whole changelog: account state is the ledger's memory.
        table_cleanup_interval=3600.0,
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
