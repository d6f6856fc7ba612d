"""ChangelogTable without a broker: decoded values beyond ``hot_max`` go back to their (deflated)
changelog JSON at safe points and come back equal; values not written yet are never evicted;
recovery keeps records as bytes; a revoked partition's keys are dropped."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import TopicPartition

import streams.tables as tables_mod
from streams.partitioned import PartitionedService
from streams.settings import Settings
from streams.tables import ChangelogTable

PARTITIONS = 6


class _Batch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes | None]] = []

    def append(self, *, key: bytes | None, value: bytes | memoryview | None, timestamp: int | None,
               headers: Any) -> bool:
        self.records.append((key, None if value is None else bytes(value)))
        return True

    def record_count(self) -> int:
        return len(self.records)


class FakeProducer:
    """Keeps every changelog record sent, in order, as (partition, key, value)."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes | None, bytes | None]] = []

    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, partition: int) -> asyncio.Future[None]:
        self.sent.extend((partition, k, v) for k, v in batch.records)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def account_state(i: int) -> dict[str, Any]:
    """Shaped like a detector account state, different per key, with the JSON types state uses."""
    return {"d": {"_": {"id": f"acct-{i}", "plan": ["FREE", "PRO"][i % 2], "n": i, "flag": 0, "ea": None,
                        "ids": [f"{i:024x}"], "win": {"b": 20753 + i, "cur": {"STANDARD_CHAT": i * 7}, "prev": {}}},
                  "CF-001": {"hr": [-1] * 23 + [i], "c": [0] * 24},
                  "CF-011": {"h": 0.5 + i, "skip": i % 3 == 0, "hc": None}},
            "o": i}


def table(hot_max: int, partitions: int = PARTITIONS) -> ChangelogTable:
    return ChangelogTable("t", "t-changelog", partitions, hot_max=hot_max)


def put(t: ChangelogTable, producer: FakeProducer, items: Sequence[tuple[int, str, Any]]) -> None:
    async def go() -> None:
        await asyncio.gather(*await t.put_many(producer, items))  # type: ignore[arg-type]

    asyncio.run(go())


def copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


def test_evicted_values_come_back_equal_from_deflated_bytes() -> None:
    t, producer = table(hot_max=10), FakeProducer()
    expected = {f"k{i}": account_state(i) for i in range(500)}
    put(t, producer, [(i % PARTITIONS, k, copy(v)) for i, (k, v) in enumerate(expected.items())])
    fp = t.footprint()
    assert fp["hot"] == 10 and fp["keys"] == 500
    assert fp["deflated"] >= 480, fp  # all but the dictionary's first samples
    assert fp["stored_bytes"] < sum(len(json.dumps(v)) for v in expected.values()) / 3
    for k, v in expected.items():
        assert t.get(k) == v
    assert t.hydrated == 490
    # The changelog itself stays plain JSON: what recovery by an older version reads too.
    assert {(k or b"").decode(): json.loads(v or b"") for _, k, v in producer.sent} == expected


def test_hot_bound_holds_after_each_write_and_reads_are_evicted_at_the_next_safe_point() -> None:
    t, producer = table(hot_max=50), FakeProducer()
    for start in range(0, 400, 100):
        put(t, producer, [(0, f"k{i}", account_state(i)) for i in range(start, start + 100)])
        assert len(t._hot) <= 50
    for i in range(300):
        assert t.get(f"k{i}") == account_state(i)
    assert len(t._hot) > 50  # reads do not evict: an object returned by get may still be changed
    t.evict()
    assert len(t._hot) == 50
    # The most recently read stay decoded.
    assert set(t._hot) == {f"k{i}" for i in range(250, 300)}


def test_a_value_changed_in_place_and_written_is_what_comes_back() -> None:
    t, producer = table(hot_max=0), FakeProducer()
    put(t, producer, [(1, f"k{i}", account_state(i)) for i in range(20)])
    v = t.get("k3")
    v["o"] = 999
    v["d"]["CF-001"]["c"][0] = 5
    put(t, producer, [(1, "k3", v)])
    assert "k3" not in t._hot
    again = t.get("k3")
    assert again == v and again is not v  # evicted after its write, decoded again


def test_values_set_but_not_written_are_never_evicted() -> None:
    t, producer = table(hot_max=0), FakeProducer()
    fresh = t.set("new", {"d": {}, "o": -1})
    put(t, producer, [(2, f"k{i}", account_state(i)) for i in range(50)])
    t.evict()
    assert t.get("new") is fresh
    fresh["o"] = 7
    assert "new" in t and "new" in set(t) and "new" in set(t.keys()) and len(t) == 51
    put(t, producer, [(2, "new", fresh)])
    assert "new" not in t._hot  # written: now it may go
    assert t.get("new") == {"d": {}, "o": 7}
    assert len(t) == 51


def test_drop_forgets_the_revoked_partitions_keys_hot_or_cold() -> None:
    t, producer = table(hot_max=20, partitions=300), FakeProducer()
    parts = (0, 1, 5, 299)
    put(t, producer, [(parts[i % 4], f"k{i}", account_state(i)) for i in range(200)])
    pending = t.set("unwritten", {"o": 1})
    t.drop({1, 299})
    assert set(t.keys()) == {f"k{i}" for i in range(200) if parts[i % 4] in (0, 5)} | {"unwritten"}
    assert all(parts[int(k[1:]) % 4] in (0, 5) for k in t._hot if k != "unwritten")
    assert t.get("k1") is None and t.get("k3") is None
    assert t.get("k2") == account_state(2)
    assert t.get("unwritten") is pending


def test_dictionaries_are_retrained_and_older_entries_still_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables_mod, "_DICT_SAMPLES", 2)
    monkeypatch.setattr(tables_mod, "_RETRAIN_MIN", 5)
    monkeypatch.setattr(tables_mod, "_RETRAIN_MAX", 5)
    t, producer = table(hot_max=0), FakeProducer()
    # Shapes change over time, like accounts first seen through a grant and later through events.
    values = {f"k{i}": account_state(i) if i % 200 < 100 else {"g": {f"grant-{i}": [i, None]}} for i in range(3000)}
    items = list(values.items())
    for start in range(0, len(items), 20):
        put(t, producer, [(0, k, v) for k, v in items[start:start + 20]])
    fp = t.footprint()
    assert fp["dictionaries"] == 256 - 1  # the format byte names at most 255; training then stops
    assert {v[0] for v in t._store.values()} >= {1, 2, 255}
    for key, value in values.items():
        assert t.get(key) == value


def test_recover_keeps_plain_json_records_as_deflated_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    records = {3: [(f"k{i}".encode(), json.dumps(account_state(i)).encode()) for i in range(300)],
               4: [(b"gone", b'{"o":1}'), (b"twice", b'{"o":1}'), (b"gone", None), (b"twice", b'{"o":2}'),
                   (b"k-spaced", b' {"o": 3}')]}
    FakeConsumer.records = records
    monkeypatch.setattr(tables_mod, "AIOKafkaConsumer", FakeConsumer)
    t = table(hot_max=10)
    t.set("k-old", {"o": 0})
    t.restore(3, b"stale", b'{"o":-1}')  # recovery starts by dropping what the partitions held
    n = asyncio.run(t.recover("unused:9092", [3, 4]))
    assert n == 305
    assert set(t._hot) == {"k-old"}  # recovered records stay bytes until read
    assert "stale" not in t and "gone" not in t
    assert t.get("k1") == account_state(1)
    assert t.get("twice") == {"o": 2}  # the later record of a key wins
    assert t.get("k-spaced") == {"o": 3}
    assert t.footprint()["deflated"] >= 290
    t.drop([4])
    assert "twice" not in t and "k-spaced" not in t and "k8" in t


class FakeConsumer:
    """The part of AIOKafkaConsumer ``ChangelogTable.recover`` uses, over ``records``."""

    records: dict[int, list[tuple[bytes, bytes | None]]] = {}

    def __init__(self, **config: Any) -> None:
        self.positions: dict[TopicPartition, int] = {}

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def assign(self, tps: list[TopicPartition]) -> None:
        self.positions = {tp: 0 for tp in tps}

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self.records.get(tp.partition, [])) for tp in tps}

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.positions[tp] = 0

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0) -> dict[TopicPartition, list[Any]]:
        out: dict[TopicPartition, list[Any]] = {}
        for tp in tps:
            start = self.positions[tp]
            chunk = self.records.get(tp.partition, [])[start:start + 64]
            self.positions[tp] = start + len(chunk)
            out[tp] = [_Record(k, v) for k, v in chunk]
        return out

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]


class _Record:
    def __init__(self, key: bytes, value: bytes | None) -> None:
        self.key, self.value = key, value


def test_save_evicts_values_a_batch_only_read_in_tables_it_did_not_write() -> None:
    async def go() -> None:
        grants, usage = table(hot_max=1_000), table(hot_max=1_000)
        svc = PartitionedService(Settings(state_hot_keys=5), "unused:9092", "g", (grants, usage))
        assert grants.hot_max == 5
        svc.producer = FakeProducer()  # type: ignore[assignment]
        await svc.save((grants, 0, f"a{i}", {"g": i}) for i in range(20))
        assert len(grants._hot) == 5
        for i in range(20):
            assert grants.get(f"a{i}") == {"g": i}  # the meter reads grants, never writes them
        await svc.save((usage, 0, f"a{i}", {"spent": i}) for i in range(3))
        assert len(grants._hot) == 5 and len(usage._hot) == 3

    asyncio.run(go())


def test_integers_beyond_64_bits_come_back_exact_from_cold_entries() -> None:
    t, producer = table(hot_max=1), FakeProducer()
    big = {"o": 1 << 70, "small": [1, 2], "float": 0.5}
    put(t, producer, [(0, "big", copy(big)), *((1, f"k{i}", account_state(i)) for i in range(20))])
    assert t.footprint()["hot"] == 1  # "big" went back to bytes
    back = t.get("big")
    assert back == big and type(back["o"]) is int
