"""State memory of the processor role (meter + detection) with many distinct accounts, in one process
and without Kafka: ``python -m tests.benchmarks.state_memory --accounts 1000000``.

The workload is the benchmark's ``accounts`` stage (``tests/benchmarks/run.py``): the grants of
``Generator(accounts=N)`` and one event per distinct account (``workload._distinct``), Avro-encoded and
keyed like the producer does. It is generated once into a cache file by a child process, so the
generator's account list (hundreds of MB at 1M accounts) is not in the measured process.

The measured process runs the real ``Processor.process`` on batches of ``process_batch`` records,
with a producer and consumer that keep records in memory. The one processor holds every partition
and has consumed its fingerprint partitions, so every fingerprint observation is folded in place
(``Processor._fp_partitions_here`` answers all of them); what is published (usage-enriched, alerts,
samples, changelog records) is dropped after being counted. The detectors' timer flush does not run.

Reports peak RSS (``VmHWM``) and, with ``--trace``, tracemalloc figures: per table the bytes freed
by dropping it (everything it holds that nothing else does), and detection's other in-memory
caches. ``--sizes`` also reports the JSON, zlib level 1 and level 6 sizes of every table's last
changelog write per key, and the size ``ChangelogTable`` stores it in (this keeps a copy of every
value, so use it with a few tens of thousands of accounts). ``--events N`` replaces the one event
per account with N events of random accounts, as in the throughput benchmark. ``--without
prompt,device`` leaves parts of detection out (the account rules, or fingerprint kinds): the
difference in ``cpu_us_per_event`` is what they cost.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from streams.credits.meter import RawRecord
from tests.benchmarks.common import peak_rss_bytes

MIB = 1024 * 1024
PARTITIONS = 6
_HEADER = struct.Struct("<BBHI")  # topic (0 grants, 1 events), partition, key length, value length


# -- the workload file ----------------------------------------------------------------------------

def write_workload(path: Path, accounts: int, seed: int, events: int | None = None) -> None:
    """Grants, then one event per account (``events`` None) or ``events`` events of random accounts
    (the throughput benchmark's workload)."""
    from streams.runtime.batch_send import KeyPartitions
    from streams.synthetic.generator import Generator
    from streams.wire.codec import encode_single_object
    from tests.benchmarks.workload import _distinct

    gen = Generator(accounts=accounts, seed=seed, account_prefix="mem-acct")
    partition_of = KeyPartitions(PARTITIONS, max_cached=0)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        for topic, schema, records in ((0, "CreditGrant", iter(gen.grants())),
                                       (1, "InteractionEvent",
                                        _distinct(gen, accounts) if events is None else gen.events(events))):
            for rec in records:
                key = rec["account_id"].encode()
                value = encode_single_object(rec, schema)
                f.write(_HEADER.pack(topic, partition_of(key), len(key), len(value)))
                f.write(key)
                f.write(value)
    tmp.rename(path)


def read_workload(path: Path, names: dict[str, str]) -> Iterator[RawRecord]:
    topics = (names["credit-grants"], names["interaction-events"])
    offsets: dict[tuple[int, int], int] = {}
    with path.open("rb") as f:
        while header := f.read(_HEADER.size):
            topic, partition, klen, vlen = _HEADER.unpack(header)
            key, value = f.read(klen), f.read(vlen)
            offset = offsets.get((topic, partition), 0)
            offsets[(topic, partition)] = offset + 1
            yield RawRecord(topics[topic], partition, offset, key, value)


# -- an in-memory Kafka for the two services --------------------------------------------------------

class _RecordBatch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes | memoryview | None]] = []

    def append(self, *, key: bytes | None, value: bytes | memoryview | None, timestamp: int | None,
               headers: Any) -> bool:
        self.records.append((key, value))
        return True

    def record_count(self) -> int:
        return len(self.records)


class MemoryProducer:
    """Acknowledges every send at once and counts it (and keeps each key's last changelog write when
    ``keep_changelog``)."""

    def __init__(self, keep_changelog: bool) -> None:
        self.keep_changelog = keep_changelog
        self.changelog: dict[str, dict[bytes, bytes]] = {}
        self.sent = 0
        self.sent_bytes = 0

    def _done(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    def _record(self, topic: str, key: bytes | None, value: bytes | memoryview | None) -> None:
        self.sent += 1
        self.sent_bytes += len(value or b"")
        if self.keep_changelog and topic.endswith("-changelog") and key is not None and value is not None:
            self.changelog.setdefault(topic, {})[key] = bytes(value)

    def create_batch(self) -> _RecordBatch:
        return _RecordBatch()

    async def send_batch(self, batch: _RecordBatch, topic: str, partition: int) -> asyncio.Future[None]:
        for key, value in batch.records:
            self._record(topic, key, value)
        return self._done()

    async def send(self, topic: str, value: bytes | memoryview | None = None, key: bytes | None = None,
                   **_: Any) -> asyncio.Future[None]:
        self._record(topic, key, value)
        return self._done()

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(PARTITIONS))

    # The transaction of each partition's batch (``streams/runtime/checkpoint.py``) is a no-op here.
    async def begin_transaction(self) -> None:
        return None

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        return None

    async def commit_transaction(self) -> None:
        return None


class MemoryConsumer:
    async def commit(self, offsets: Any) -> None:
        return None

    async def position(self, tp: TopicPartition) -> int:
        return -1  # no transaction markers in memory: never past a batch's last record


def fetched(records: list[RawRecord]) -> dict[TopicPartition, list[RawRecord]]:
    out: dict[TopicPartition, list[RawRecord]] = {}
    for r in records:
        out.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
    return out


# -- the run ----------------------------------------------------------------------------------------

def _chunks(it: Iterator[RawRecord], n: int) -> Iterator[list[RawRecord]]:
    chunk: list[RawRecord] = []
    for r in it:
        chunk.append(r)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _freed(clear: Any) -> int:
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    clear()
    gc.collect()
    return before - tracemalloc.get_traced_memory()[0]


@dataclass
class Simulation:
    processor: Any
    producer: MemoryProducer
    batches: int = 0


WITHOUT_CHOICES = ("account", "device", "payment", "prompt")


async def simulate(path: Path, settings_kw: dict[str, Any], keep_changelog: bool = False,
                   without: frozenset[str] = frozenset()) -> Simulation:
    """The processor (metering and detection) over the workload file, in this process. ``without``:
    the account rules and/or fingerprint kinds left out, to see what each costs."""
    from streams.processor import Processor
    from streams.runtime import gc_policy
    from streams.runtime.batch_send import KeyPartitions
    from streams.runtime.topics import topic_names
    from streams.settings import Settings

    settings = Settings(partitions=PARTITIONS, app_id="mem", **settings_kw)
    names = topic_names(settings)
    processor = Processor(settings, "unused:9092", names)
    producer = MemoryProducer(keep_changelog)
    processor.producer = producer
    processor.consumer = MemoryConsumer()
    processor.owned = set(range(PARTITIONS))
    processor.checkpoint.producers = {p: producer for p in range(PARTITIONS)}  # type: ignore[misc]
    processor.detection.fp_partitions = KeyPartitions(PARTITIONS)
    if "account" in without:
        processor.detection.engine._account = ()
    processor.detection.fp_kinds = {k: f for k, f in processor.detection.fp_kinds.items() if k not in without}

    async def every_partition_here() -> set[int]:
        return set(range(PARTITIONS))

    processor._fp_partitions_here = every_partition_here
    sim = Simulation(processor, producer)
    # As a worker runs it (``create_app`` tunes the collector, ``PartitionedService._run`` pauses it).
    gc_policy.tune_for_batches()
    for chunk in _chunks(read_workload(path, names), settings.process_batch):
        with gc_policy.paused():
            await processor.process(fetched(chunk))
        del chunk
        sim.batches += 1
    return sim


async def run(path: Path, accounts: int, trace: bool, sizes: bool, settings_kw: dict[str, Any],
              without: frozenset[str] = frozenset()) -> dict[str, Any]:
    if trace:
        tracemalloc.start()
    gc.collect()
    rss_start = peak_rss_bytes()
    started = time.perf_counter()
    cpu0 = time.process_time()
    sim = await simulate(path, settings_kw, keep_changelog=sizes, without=without)
    processor, producer, batches = sim.processor, sim.producer, sim.batches
    detection = processor.detection
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    gc.collect()
    out: dict[str, Any] = {
        "accounts": accounts, "batches": batches, "seconds": round(elapsed, 1), "cpu_s": round(cpu, 1),
        "peak_rss_mib": round(peak_rss_bytes() / MIB, 1),
        "rss_before_run_mib": round(rss_start / MIB, 1),
        "records_sent": producer.sent, "metered": processor.metered, "detection_events": detection.events,
        "settings": settings_kw, "without": sorted(without),
        "cpu_us_per_event": round(cpu * 1e6 / max(1, processor.metered), 1),
    }
    tables = processor.tables
    out["keys"] = {t.name: len(list(t.keys())) if hasattr(t, "keys") else len(t.data) for t in tables}
    if all(hasattr(t, "footprint") for t in tables):
        out["tables"] = {}
        for t in tables:
            fp = t.footprint()
            for size in ("stored_bytes", "disk_bytes"):  # in memory (deflate versions) or in RocksDB
                if size in fp:
                    fp[f"{size}_per_key"] = round(fp[size] / max(1, fp["keys"]), 1)
            out["tables"][t.name] = fp
    if trace:
        current, peak = tracemalloc.get_traced_memory()
        out["traced_current_mib"] = round(current / MIB, 1)
        out["traced_peak_mib"] = round(peak / MIB, 1)
        freed: dict[str, float] = {}
        for name, clear in (
            ("recent_accounts+recent_fps", lambda: (detection.recent_accounts.clear(), detection.recent_fps.clear())),
            ("fp_partitions cache", lambda: detection.fp_partitions._cache.clear()),
            *((t.name, lambda t=t: t.drop(range(PARTITIONS))) for t in tables),
        ):
            freed[name] = _freed(clear)
        out["freed_bytes"] = {k: int(v) for k, v in freed.items()}
        out["freed_bytes_per_account"] = {k: round(v / accounts, 1) for k, v in freed.items()}
        out["freed_mib"] = {k: round(v / MIB, 1) for k, v in freed.items()}
        out["traced_after_drop_mib"] = round(tracemalloc.get_traced_memory()[0] / MIB, 1)
        tracemalloc.stop()
    if sizes:
        out["sizes"] = changelog_sizes(producer, tables, accounts)
    return out


def changelog_sizes(producer: MemoryProducer, tables: tuple[Any, ...], accounts: int) -> dict[str, Any]:
    """Per table: keys, and bytes per account of the last write per key as written (``json``: the
    table's codec, JSON unless the table has another, e.g. the usage table's MessagePack) and
    zlib-compressed, and as decoded Python objects (tracemalloc, a fresh decode of each value)."""
    out: dict[str, Any] = {}
    for t in tables:
        values = list(producer.changelog.get(t.topic, {}).values())
        if not values:
            continue
        row: dict[str, Any] = {"keys": len(values)}
        row["json"] = sum(map(len, values))
        for level in (1, 6):
            row[f"zlib{level}"] = sum(len(zlib.compress(v, level)) for v in values)
        try:
            from streams.runtime.changelog import _Deflate
        except ImportError:  # a tables.py that keeps everything decoded, or cold keys in RocksDB
            pass
        else:
            # What ChangelogTable stores: raw deflate with a dictionary of the table's first values.
            deflate = _Deflate()
            row["table_deflate"] = sum(len(deflate.pack(0, v)) for v in values)
        # The bytes objects themselves, as a table would hold them (header and allocator rounding).
        z1 = [zlib.compress(v, 1) for v in values]
        gc.collect()
        tracemalloc.start()
        b0 = tracemalloc.get_traced_memory()[0]
        held = [bytes(memoryview(v)) for v in z1]  # copies
        row["zlib1_as_bytes_objects"] = tracemalloc.get_traced_memory()[0] - b0
        del held
        b0 = tracemalloc.get_traced_memory()[0]
        decoded = [t.codec.decode(v) for v in values]
        row["decoded_objects"] = tracemalloc.get_traced_memory()[0] - b0
        del decoded
        tracemalloc.stop()
        row["per_key"] = {k: round(v / len(values), 1) for k, v in row.items() if k != "keys"}
        row["per_account"] = {k: round(v / accounts, 1) for k, v in row.items() if k not in ("keys", "per_key")}
        out[t.name] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accounts", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--events", type=int, help="events over random accounts instead of one per account")
    ap.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")))
    ap.add_argument("--trace", action="store_true", help="tracemalloc figures (slower)")
    ap.add_argument("--sizes", action="store_true", help="JSON/zlib sizes of the changelog writes")
    ap.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                    help="a Settings field for the run, e.g. state_hot_keys=50000")
    ap.add_argument("--without", default="", metavar="PARTS",
                    help=f"comma-separated parts of detection to leave out: {', '.join(WITHOUT_CHOICES)}")
    ap.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    without = frozenset(w for w in a.without.split(",") if w)
    unknown = sorted(without - set(WITHOUT_CHOICES))
    if unknown:
        ap.error(f"--without takes {', '.join(WITHOUT_CHOICES)}; got {', '.join(unknown)}")
    name = f"{a.accounts}-{a.seed}" + (f"-{a.events}ev" if a.events is not None else "")
    path = a.cache_dir / f"creditflow-state-memory-{name}.bin"
    if a.write_only:
        write_workload(path, a.accounts, a.seed, a.events)
        return
    if not path.exists():
        # A child process, so the generator's memory never shows in this one's peak RSS.
        subprocess.run([sys.executable, "-m", "tests.benchmarks.state_memory", "--write-only",
                        "--accounts", str(a.accounts), "--seed", str(a.seed), "--cache-dir", str(a.cache_dir),
                        *(("--events", str(a.events)) if a.events is not None else ())], check=True)
    settings_kw = dict(s.split("=", 1) for s in a.setting)
    print(json.dumps(asyncio.run(run(path, a.accounts, a.trace, a.sizes, settings_kw, without)), indent=1))


if __name__ == "__main__":
    main()
