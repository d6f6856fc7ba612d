"""A broker away for longer than aiokafka's request timeout (40 s) and the transaction timeout (60 s),
with two processors and a sink in processes of their own (``--role processor``, ``--role sink``).

Before, a processor exited about a minute in: the detector timer's flush (or a batch) met a retriable
Kafka error inside ``Checkpoint.write`` (a send's metadata wait giving up with
``UnknownTopicOrPartitionError``, an end-offsets request timing out) and took it for a bug. The
second processor here joins just before the outage and has not flushed yet, so its timer's first
flush comes while the broker is away: that is the failure, every time. Now the timer defers while
the group coordinator is unreachable, and a retriable error in a batch or a flush rewinds the worker
to what it committed (``PartitionedService.rewind``). Every worker must ride it out on its first
start, resume by itself, and every total must be exact.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from deploy.kafka.launcher import LocalKafka
from streams.runtime.kafka_clients import KafkaClients
from streams.runtime.owners import partition_owners
from streams.runtime.topics import ensure_topics
from streams.settings import Settings
from tests.integration.faults.test_broker_restart import _kill, broker  # noqa: F401  (fixture)
from tests.integration.harness import Worker, group_lag, wait_drained
from tests.integration.test_pipeline import _produce, _verify_exact, _wait_grants_applied, _workload

pytestmark = pytest.mark.integration

# Longer than the transaction timeout (60 s): the broker aborts what was open when it went away.
OUTAGE_S = float(os.environ.get("CREDITFLOW_TEST_LONG_OUTAGE_S", "80"))


def _wait_metered(settings: Settings, processor: Worker, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while group_lag(settings.kafka_bootstrap_servers or "", f"{settings.app_id}-processor",
                    [settings.topic("interaction-events")]) > 0:
        assert processor.alive and time.monotonic() < deadline, processor.log_tail()
        time.sleep(0.2)


def _wait_split(settings: Settings, count: int, timeout: float = 120) -> None:
    """Until the processor group spreads every input partition over ``count`` workers (the sink
    announces itself too, so the harness' count of announced workers does not apply)."""
    clients = KafkaClients(settings, settings.kafka_bootstrap_servers)
    topic, group = settings.topic("interaction-events"), f"{settings.app_id}-processor"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owners = asyncio.run(partition_owners(clients, group, topic))
        if len(owners) == settings.partitions and len(set(owners.values())) == count:
            return
        time.sleep(0.5)
    raise AssertionError(f"the processors did not share the partitions in {timeout}s")


def test_processors_and_sink_ride_out_a_long_broker_outage(broker: LocalKafka, tmp_path: Path) -> None:  # noqa: F811
    bootstrap = broker.status().bootstrap  # type: ignore[union-attr]
    settings = Settings(
        kafka_bootstrap_servers=bootstrap, topic_prefix="outage.", app_id="creditflow-outage",
        data_dir=tmp_path / "data", clickhouse_url=f"chdb://{tmp_path / 'clickhouse'}",
        sink_flush_seconds=0.5, process_batch=400,
    )
    gen, grants, events = _workload(120, 4_000, 53, "outage")
    first, second = events[:2_000], events[2_000:]
    asyncio.run(ensure_topics(bootstrap, settings))
    # The default detector interval (30 s): the second processor's first flush falls in the outage.
    env = {"CREDITFLOW_KAFKA_LOG_INTERVAL_SECONDS": "10"}
    sink = Worker(settings, "sink", tmp_path, "sink", **env).start()
    one = Worker(settings, "processor", tmp_path, "processor-1", **env).start()
    workers = [sink, one]
    try:
        _produce(settings, grants, [])
        _wait_grants_applied(settings, one)
        _produce(settings, [], first)
        _wait_metered(settings, one)
        workers.append(Worker(settings, "processor", tmp_path, "processor-2", **env).start())
        _wait_split(settings, 2)
        time.sleep(3)  # the assignment callbacks (acquire, read state) finish: the kill finds both idle
        _kill(broker)
        sizes = {w.name: w.log_path.stat().st_size for w in workers}
        deadline = time.monotonic() + OUTAGE_S
        while time.monotonic() < deadline:
            for w in workers:
                assert w.alive, f"{w.name} exited during the outage:\n{w.log_tail()}"
            time.sleep(1)
        for w in workers:
            grown = w.log_path.stat().st_size - sizes[w.name]
            assert grown < 20_000 * max(1.0, OUTAGE_S / 60), f"{w.name} logged {grown} bytes:\n{w.log_tail()}"

        assert LocalKafka(tmp_path / "broker").start(timeout=120) == bootstrap
        sender = threading.Thread(target=_produce, args=(settings, [], second), daemon=True)
        sender.start()
        sender.join(timeout=180)
        assert not sender.is_alive()
        wait_drained(settings, workers, timeout=240)
        for w in workers:
            assert w.starts == 1 and w.alive, w.log_tail()
            assert w.stop() == 0, w.log_tail()
        _verify_exact(settings, gen, events, grants)
    finally:
        for w in workers:
            w.stop(timeout=30)
