"""ClickHouse goes away under the sink: it backs off, commits nothing, stops reading (bounded
memory) and resumes by itself when ClickHouse returns — against the real broker and chDB."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from sinks.client import ClickHouseUnavailable, close, connect
from sinks.migrations import apply_migrations
from sinks.service import ClickHouseSink
from streams.runtime.topics import ensure_topics, topic_names
from streams.settings import Settings
from streams.wire.codec import encode_single_object
from streams.wire.headers import source_offset_header
from tests.metered import metered

pytestmark = pytest.mark.integration


class FlakyClickHouse:
    """The real chDB client behind a switch: while ``down``, every call fails like a lost server."""

    def __init__(self, url: str) -> None:
        self.real = connect(url)
        self.down = True
        self.failed_calls = 0

    def _check(self) -> None:
        if self.down:
            self.failed_calls += 1
            raise ClickHouseUnavailable("connection refused (simulated outage)")

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return self.real.insert(*args, **kwargs)

    def query(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return self.real.query(*args, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return self.real.command(*args, **kwargs)


async def _committed(bootstrap: str, group: str, tps: list[TopicPartition]) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return sum(offsets[tp].offset for tp in tps if tp in offsets and offsets[tp].offset > 0)
    finally:
        await admin.close()


def _sink_setup(topic_settings: Settings, tmp_path: Path, **updates: Any
                ) -> tuple[Settings, str, str, dict[str, str], list[TopicPartition]]:
    """Settings with a migrated chDB under ``tmp_path``; (settings, bootstrap, ClickHouse URL, topic
    names, the three usage-enriched partitions)."""
    settings = topic_settings.model_copy(update={"clickhouse_url": f"chdb://{tmp_path / 'ch'}", **updates})
    apply_migrations(connect(settings.resolved_clickhouse_url), settings.events_ttl_days)
    names = topic_names(settings)
    return (settings, settings.kafka_bootstrap_servers or "", settings.resolved_clickhouse_url, names,
            [TopicPartition(names["usage-enriched"], p) for p in range(3)])


async def _produce_metered(settings: Settings, records: list[dict[str, Any]], stamped: bool) -> None:
    """The records on usage-enriched, each in its source partition, as the processor writes them
    (``stamped``: with the source-offset header) or as an older processor did (without)."""
    bootstrap = settings.kafka_bootstrap_servers or ""
    topic = topic_names(settings)["usage-enriched"]
    await ensure_topics(bootstrap, settings)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for rec in records:
            await producer.send(topic, encode_single_object(rec, "UsageEnriched"),
                                key=rec["account_id"].encode(), partition=rec["source_partition"],
                                headers=[source_offset_header(rec["source_offset"])] if stamped else None)
        await producer.flush()
    finally:
        await producer.stop()


def _assert_stored_once(client: Any, records: list[dict[str, Any]]) -> None:
    rows = client.query("SELECT count(), uniqExact(event_id), sum(charged_micro) FROM events").result_rows
    assert rows[0][0] == rows[0][1] == len(records)
    assert rows[0][2] == sum(r["charged_micro"] for r in records)
    ledger = client.query("SELECT count(), sum(amount_micro) FROM credit_ledger").result_rows[0]
    assert ledger == (sum(len(r["debits"]) for r in records),
                      sum(d["amount_micro"] for r in records for d in r["debits"]))


# Stamped records (as the processor writes them) take the Avro-file path into ClickHouse; unstamped
# ones (an older processor) are decoded in Python. Both must wait out the outage.
@pytest.mark.parametrize("stamped", [True, False], ids=["avro-file path", "decoding path"])
def test_sink_waits_out_a_clickhouse_outage_and_resumes(topic_settings: Settings, tmp_path: Path,
                                                        stamped: bool) -> None:
    settings, bootstrap, url, names, tps = _sink_setup(topic_settings, tmp_path, sink_flush_seconds=0.3,
                                                       sink_batch_rows=500)
    records = metered(3_000, accounts=40, seed=17, prefix="outage", partitions=3)

    async def scenario() -> None:
        await _produce_metered(settings, records, stamped)

        flaky = FlakyClickHouse(url)
        sink = ClickHouseSink(settings, bootstrap, names, client_factory=lambda: flaky)
        await sink.start()
        try:
            await asyncio.sleep(6)
            buffered = sink.planner.buffered()
            assert flaky.failed_calls >= 3, "the sink must keep retrying while ClickHouse is down"
            assert await _committed(bootstrap, sink.group, tps) == 0, "nothing may be committed during an outage"
            # Stops polling while it cannot store: memory stays within one fetch of the batch size.
            assert buffered <= settings.sink_batch_rows * 2

            flaky.down = False
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if await _committed(bootstrap, sink.group, tps) == len(records):
                    break
                await asyncio.sleep(0.5)
            assert await _committed(bootstrap, sink.group, tps) == len(records), "the sink did not resume"
            assert (sink.stats.direct_batches > 0) == stamped
        finally:
            await sink.stop()

    asyncio.run(scenario())
    try:
        client = connect(url)
        _assert_stored_once(client, records)
    finally:
        close(url)


class DiesAfterFirstInsert(FlakyClickHouse):
    """Healthy until the first events insert has landed, then gone: a sink that dies in the middle
    of a store (events stored, ledger not, offsets not committed)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.down = False

    def command(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        result = self.real.command(*args, **kwargs)
        if "INSERT INTO events" in str(args[0] if args else kwargs.get("cmd", "")):
            self.down = True
        return result


def test_a_store_cut_short_is_re_formed_whole_by_the_next_sink(topic_settings: Settings, tmp_path: Path) -> None:
    settings, bootstrap, url, names, tps = _sink_setup(topic_settings, tmp_path, sink_flush_seconds=0.5,
                                                       sink_batch_rows=50_000)
    records = metered(2_000, accounts=30, seed=23, prefix="store", partitions=3)

    async def scenario() -> None:
        await _produce_metered(settings, records, stamped=True)

        dying = DiesAfterFirstInsert(url)
        first = ClickHouseSink(settings, bootstrap, names, client_factory=lambda: dying)
        await first.start()
        try:
            deadline = time.monotonic() + 30
            while not dying.down and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert dying.down, "the first store never reached ClickHouse"
            await asyncio.sleep(1)
        finally:
            await first.stop()
        assert await _committed(bootstrap, first.group, tps) == 0

        second = ClickHouseSink(settings, bootstrap, names)
        await second.start()
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and await _committed(bootstrap, second.group, tps) < len(records):
                await asyncio.sleep(0.5)
            assert await _committed(bootstrap, second.group, tps) == len(records)
        finally:
            await second.stop()

    asyncio.run(scenario())
    try:
        client = connect(url)
        stores = client.query("SELECT store, count() FROM sink_batches FINAL GROUP BY store "
                              "ORDER BY min(planned_at)").result_rows
        assert stores[0][0] and stores[0][1] >= 2, f"the first store spans partitions: {stores}"
        _assert_stored_once(client, records)
    finally:
        close(url)
