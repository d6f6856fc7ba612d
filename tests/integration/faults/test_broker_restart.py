"""A broker killed and started again on the same data dir while a worker runs and events flow.

The broker must come back on the same port, the worker must resume by itself (no restart), the
producer API must raise ``DeliveryError`` within its delivery timeout while the broker is away
(instead of hanging), the worker's log must stay small, and every event must be counted exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.kafka.launcher import LocalKafka
from streams.producer import CreditflowProducer, DeliveryError
from streams.runtime.topics import create_topic, ensure_topics
from streams.settings import Settings
from tests.integration.harness import Worker, wait_drained
from tests.integration.test_pipeline import _produce, _verify_exact, _wait_grants_applied, _workload

pytestmark = pytest.mark.integration

# A short outage in the suite; CREDITFLOW_TEST_OUTAGE_S=180 rides out minutes of it.
OUTAGE_S = float(os.environ.get("CREDITFLOW_TEST_OUTAGE_S", "20"))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalKafka]:
    """A broker of this test's own: killing the session broker would break every other test."""
    kafka = LocalKafka(tmp_path / "broker")
    try:
        kafka.start(timeout=120)
        yield kafka
    finally:
        LocalKafka(tmp_path / "broker").stop()


def _kill(kafka: LocalKafka) -> None:
    status = kafka.status()
    assert status is not None and status.alive
    os.kill(status.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while kafka.status() is not None and kafka.status().alive and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.2)
    assert not kafka.status().alive  # type: ignore[union-attr]


async def _delivery_while_down(producer: CreditflowProducer, event: dict[str, object]) -> float:
    """Seconds until the producer API gives up, the longer of: an emit + flush on a producer started
    before the outage, and then an emit that waits (its client was dropped, so it reconnects)."""
    took = []
    for wait in (False, True):
        started = time.monotonic()
        with pytest.raises(DeliveryError):
            await producer.emit_interaction(event, wait=wait)
            await producer.flush()
        took.append(time.monotonic() - started)
    return max(took)


def test_worker_rides_out_a_broker_restart(broker: LocalKafka, tmp_path: Path) -> None:
    bootstrap = broker.status().bootstrap  # type: ignore[union-attr]
    settings = Settings(
        kafka_bootstrap_servers=bootstrap, topic_prefix="restart.", app_id="creditflow-restart",
        data_dir=tmp_path / "data", clickhouse_url=f"chdb://{tmp_path / 'clickhouse'}",
        sink_flush_seconds=0.5, process_batch=400,
    )
    gen, grants, events = _workload(150, 6_000, 41, "restart")
    first, second = events[:3_000], events[3_000:]
    asyncio.run(ensure_topics(bootstrap, settings))
    worker = Worker(settings, "all", tmp_path, "worker", CREDITFLOW_KAFKA_LOG_INTERVAL_SECONDS="10").start()
    try:
        _produce(settings, grants, [])
        _wait_grants_applied(settings, worker)
        # Half the events go in while the broker is up, the rest while it is down and after: the
        # producer thread keeps retrying the way a platform service would (DeliveryError -> resend).
        _produce(settings, [], first)

        probe_settings = settings.model_copy(update={"kafka_delivery_timeout_ms": 4_000,
                                                     "topic_prefix": "restart-probe."})
        asyncio.run(create_topic(bootstrap, probe_settings.topic("interaction-events"), 1, 1, {}))

        async def outage() -> float:
            async with CreditflowProducer(probe_settings) as producer:
                await producer.emit_interaction(second[0], wait=True)
                _kill(broker)
                log_size_before = worker.log_path.stat().st_size
                took = await _delivery_while_down(producer, second[1])
                # The broker is away for a while; nothing restarts the worker meanwhile.
                await asyncio.sleep(max(0.0, OUTAGE_S - took))
                assert worker.alive, worker.log_tail()
                grown = worker.log_path.stat().st_size - log_size_before
                # Connection errors at a bounded rate: a few lines per kind, not a megabyte a minute.
                bound = 20_000 * max(1.0, OUTAGE_S / 60)
                assert grown < bound, f"worker logged {grown} bytes in {OUTAGE_S}s of outage:\n{worker.log_tail()}"
                # The timed-out record was dropped with its client: closing does not wait for it.
                return took

        took = asyncio.run(outage())
        assert took < 4.0 + 6.0, f"DeliveryError came after {took:.1f}s, the delivery timeout is 4s"
        with pytest.raises(DeliveryError):
            asyncio.run(CreditflowProducer(probe_settings).start())

        again = LocalKafka(tmp_path / "broker").start(timeout=120)
        assert again == bootstrap, "the restarted broker must keep its address"

        sender = threading.Thread(target=_produce, args=(settings, [], second), daemon=True)
        sender.start()
        sender.join(timeout=180)
        assert not sender.is_alive()
        wait_drained(settings, [worker], timeout=240)
        assert worker.starts == 1 and worker.alive
        assert worker.stop() == 0, worker.log_tail()
        _verify_exact(settings, gen, events, grants)
    finally:
        worker.stop(timeout=30)
