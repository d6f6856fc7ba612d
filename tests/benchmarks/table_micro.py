"""Per-key cost of ``ChangelogTable.get`` and ``put_many`` (no Kafka, a producer that drops records):
``python -m tests.benchmarks.table_micro [--baseline OLD_TABLES_PY]``.

Values are detection account states, fingerprint states and usage states as the state-memory workload
(``tests/benchmarks/state_memory.py``) writes them, taken from its changelog; ``--keys`` keys per
table, each written once per round in batches of ``--batch`` like the processor does. Reported per key,
best of ``--repeat`` rounds:

- ``get hot`` / ``put_many hot``: every key fits the decoded set (``hot_max`` >= keys);
- ``put_many+evict cold``: ``hot_max`` 0, so every write also goes to the local store at the end of its batch;
- ``get cold``: reading a key back from the local store and decoding it (the next ``put_many`` evicts it again).

``--baseline`` loads another ``tables.py`` (e.g. ``git show main:streams/runtime/changelog.py > /tmp/t.py``) and
reports its figures as ``baseline hot``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.benchmarks.state_memory import MemoryProducer, simulate, write_workload

_SAMPLE_ACCOUNTS = 2_000


def sample_values(cache_dir: Path) -> dict[str, list[bytes]]:
    """Changelog values per table from a small state-memory run."""
    path = cache_dir / f"creditflow-state-memory-{_SAMPLE_ACCOUNTS}-7.bin"
    if not path.exists():
        write_workload(path, _SAMPLE_ACCOUNTS, 7)
    producer = asyncio.run(simulate(path, {}, keep_changelog=True)).producer
    return {topic.split("-", 1)[1].removesuffix("-changelog"): list(kv.values())
            for topic, kv in producer.changelog.items()}


def load_table_class(path: Path | None) -> Any:
    if path is None:
        from streams.runtime.changelog import ChangelogTable

        return ChangelogTable
    spec = importlib.util.spec_from_file_location("baseline_tables", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ChangelogTable


def codec_of(values: list[bytes]) -> Any:
    """The usage table's codec for its MessagePack values (``streams/credits/account_state.py``),
    else JSON."""
    from streams.credits.account_state import USAGE_CODEC
    from streams.runtime.changelog import JSON_CODEC

    return JSON_CODEC if values[0][:1] in (b"{", b"[") else USAGE_CODEC


def codec_kw(codec: Any) -> dict[str, Any]:
    """Only a table that needs another codec is given one (a ``--baseline`` table may not know codecs)."""
    from streams.runtime.changelog import JSON_CODEC

    return {} if codec is JSON_CODEC else {"codec": codec}


def best(fn: Callable[[], float], repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def measure(table_cls: Any, values: list[bytes], keys: int, batch: int, repeat: int,
            hot_max: int | None) -> dict[str, float]:
    codec = codec_of(values)
    names = [f"key-{i:07d}" for i in range(keys)]
    objs = [codec.decode(values[i % len(values)]) for i in range(keys)]
    table = table_cls("t", "t-changelog", 6, **codec_kw(codec)) if hot_max is None else \
        table_cls("t", "t-changelog", 6, hot_max, **codec_kw(codec))
    producer = MemoryProducer(keep_changelog=False)
    loop = asyncio.new_event_loop()

    def put_round() -> float:
        t = time.perf_counter()
        for start in range(0, keys, batch):
            loop.run_until_complete(table.put_many(
                producer, [(i % 6, names[i], objs[i]) for i in range(start, min(keys, start + batch))]))
        return (time.perf_counter() - t) / keys * 1e6

    def get_round() -> float:
        get = table.get
        t = time.perf_counter()
        for k in names:
            get(k)
        return (time.perf_counter() - t) / keys * 1e6

    out: dict[str, float] = {}
    out["put_many"] = best(put_round, repeat)
    if hot_max == 0:
        # Each get decodes; putting the keys back (and evicting them) between rounds is not timed.
        def cold_get_round() -> float:
            table.evict()
            return get_round()
        out["get"] = best(cold_get_round, repeat)
    else:
        out["get"] = best(get_round, repeat)
    loop.close()
    return {k: round(v, 3) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=5_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--baseline", type=Path, help="another tables.py to time the same way (hot figures)")
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp"))
    a = ap.parse_args()
    samples = sample_values(a.cache_dir)
    current, baseline = load_table_class(None), load_table_class(a.baseline) if a.baseline else None
    results: dict[str, Any] = {}
    for table, values in samples.items():
        # Interleaved, each from a collected heap: what one leaves behind must not bill the other.
        row: dict[str, Any] = {}
        if baseline is not None:
            gc.collect()
            row["baseline hot"] = measure(baseline, values, a.keys, a.batch, a.repeat, None)
        gc.collect()
        row["hot"] = measure(current, values, a.keys, a.batch, a.repeat, a.keys)
        gc.collect()
        row["cold"] = measure(current, values, a.keys, a.batch, a.repeat, 0)
        results[table] = row
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
