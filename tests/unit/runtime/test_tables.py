"""ChangelogTable without a broker: decoded values beyond ``hot_max`` go to the local RocksDB store
at safe points and come back equal; values not written yet are never evicted; recovery writes
records to the store as bytes; a revoked partition's keys are dropped; the store's directory is
removed on close, and stale ones of dead processes when a table is created."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

import streams.runtime.changelog as tables_mod
from streams.runtime.changelog import ChangelogTable
from streams.runtime.partitioned import PartitionedService
from streams.settings import Settings

PARTITIONS = 6

MakeTable = Callable[..., ChangelogTable]


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


def state_dirs(base: Path) -> list[Path]:
    return sorted(base.glob("creditflow-state-*"))


@pytest.fixture
def state_base(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def table(state_base: Path) -> Iterator[MakeTable]:
    """Makes tables whose stores live under ``state_base``; closes them after the test and checks
    that no store directory is left behind."""
    made: list[ChangelogTable] = []

    def make(hot_max: int, partitions: int = PARTITIONS) -> ChangelogTable:
        t = ChangelogTable("t", "t-changelog", partitions, hot_max=hot_max, state_dir=str(state_base))
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()
    assert state_dirs(state_base) == []


def put(t: ChangelogTable, producer: FakeProducer, items: Sequence[tuple[int, str, Any]]) -> None:
    async def go() -> None:
        await asyncio.gather(*await t.put_many(producer, items))  # type: ignore[arg-type]

    asyncio.run(go())


def copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


class CountingStore:
    """Wraps a table's Rdict to count the writes that reach it."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.writes = 0

    def write(self, batch: Any, write_opt: Any = None) -> None:
        self.writes += 1
        self.db.write(batch, write_opt)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def test_evicted_values_come_back_equal_from_the_store(table: MakeTable) -> None:
    t, producer = table(hot_max=10), FakeProducer()
    expected = {f"k{i}": account_state(i) for i in range(500)}
    put(t, producer, [(i % PARTITIONS, k, copy(v)) for i, (k, v) in enumerate(expected.items())])
    fp = t.footprint()
    assert (fp["keys"], fp["hot"], fp["written"], fp["cold"], fp["evicted"]) == (500, 10, 10, 490, 490), fp
    for k, v in expected.items():
        assert t.get(k) == v
    assert t.hydrated == 490
    # The changelog itself stays plain JSON: what recovery by an older version reads too.
    assert {(k or b"").decode(): json.loads(v or b"") for _, k, v in producer.sent} == expected


def test_many_keys_written_over_several_batches_come_back_as_last_written(table: MakeTable) -> None:
    t, producer = table(hot_max=100), FakeProducer()
    expected: dict[str, Any] = {}
    for rnd in range(3):
        # Each round rewrites a third of the keys: the store holds older versions that must lose.
        items = [(i % PARTITIONS, f"key-{i}", {**account_state(i), "round": rnd})
                 for i in range(5_000) if rnd == 0 or i % 3 == rnd]
        for start in range(0, len(items), 700):
            put(t, producer, items[start:start + 700])
            assert len(t._hot) <= 100
        expected.update((k, copy(v)) for _, k, v in items)
    assert len(t) == 5_000 and set(t.keys()) == set(expected)
    assert sum(1 for k, v in expected.items() if t.get(k) != v) == 0
    assert t.footprint()["disk_bytes"] > 0


def test_hot_bound_holds_after_each_write_and_reads_are_evicted_at_the_next_safe_point(table: MakeTable) -> None:
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


def test_make_room_keeps_a_batchs_keys_within_the_bound_and_evicts_only_others(table: MakeTable) -> None:
    t, producer = table(hot_max=50), FakeProducer()
    put(t, producer, [(0, f"k{i}", account_state(i)) for i in range(50)])  # batch 1: 50 hot, written
    pending = t.set("pending", {"o": 1})  # set, not written yet: never evicted
    # The next batch uses 10 of the hot keys and 30 keys only in the store or new.
    upcoming = {f"k{i}" for i in range(40, 50)} | {f"n{i}" for i in range(30)}
    assert t.make_room(upcoming) == 31  # 51 hot + 30 new - 50
    assert upcoming & {f"k{i}" for i in range(40, 50)} <= set(t._hot) and "pending" in t._hot
    for k in upcoming:
        if k.startswith("n"):
            t.set(k, {"o": int(k[1:])})
    assert len(t._hot) == 50  # the bound holds through the batch's reads, not just after its writes
    # Evicted values were written to the store first and come back equal.
    assert [t.get(f"k{i}") for i in range(31)] == [account_state(i) for i in range(31)]
    assert t.get("pending") is pending


def test_make_room_does_nothing_while_the_batch_fits(table: MakeTable) -> None:
    t, producer = table(hot_max=100), FakeProducer()
    put(t, producer, [(0, f"k{i}", account_state(i)) for i in range(60)])
    assert t.make_room({f"n{i}" for i in range(40)}) == 0 and len(t._hot) == 60
    # Keys already hot are not new: nothing to make room for.
    assert t.make_room({f"k{i}" for i in range(60)} | {"n0"}) == 0


def test_a_value_changed_in_place_and_written_is_what_comes_back(table: MakeTable) -> None:
    t, producer = table(hot_max=0), FakeProducer()
    put(t, producer, [(1, f"k{i}", account_state(i)) for i in range(20)])
    v = t.get("k3")
    assert "k3" not in t._written  # read from the store: nothing to write back
    v["o"] = 999
    v["d"]["CF-001"]["c"][0] = 5
    put(t, producer, [(1, "k3", v)])
    assert "k3" not in t._hot and "k3" not in t._written
    again = t.get("k3")
    assert again == v and again is not v  # evicted after its write, decoded again


def test_values_only_read_are_evicted_without_writing_the_store(table: MakeTable) -> None:
    t, producer = table(hot_max=0), FakeProducer()
    put(t, producer, [(0, f"k{i}", account_state(i)) for i in range(30)])
    counting = CountingStore(t._db)
    t._db = counting  # type: ignore[assignment]
    for i in range(30):
        t.get(f"k{i}")
    assert t._written == {} and len(t._hot) == 30
    assert t.evict() == 30
    assert counting.writes == 0
    put(t, producer, [(0, "k5", {"o": 5})])
    assert counting.writes == 1  # the write's eviction: one batch per evict
    assert t.get("k5") == {"o": 5} and t.get("k6") == account_state(6)


def test_values_set_but_not_written_are_never_evicted(table: MakeTable) -> None:
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


def test_a_written_null_hides_an_older_value_in_the_store(table: MakeTable) -> None:
    t, producer = table(hot_max=1), FakeProducer()
    put(t, producer, [(0, "k", {"o": 1}), (0, "other", {"o": 2})])  # "k" goes to the store
    put(t, producer, [(0, "k", None)])
    assert "k" in t._hot and t.get("k") is None


def test_drop_forgets_the_revoked_partitions_keys_hot_or_cold(table: MakeTable) -> None:
    t, producer = table(hot_max=20, partitions=300), FakeProducer()
    parts = (0, 1, 5, 299)
    put(t, producer, [(parts[i % 4], f"k{i}", account_state(i)) for i in range(200)])
    t.get("k101")  # read back from the store: hot, not written
    pending = t.set("unwritten", {"o": 1})
    t.drop({1, 299})
    kept = {f"k{i}" for i in range(200) if parts[i % 4] in (0, 5)}
    assert set(t.keys()) == kept | {"unwritten"} and len(t) == len(kept) + 1
    assert "k101" not in t._hot and "k101" not in t
    assert all(parts[int(k[1:]) % 4] in (0, 5) for k in t._hot if k != "unwritten")
    assert all(parts[int(k[1:]) % 4] in (0, 5) for k in t._written)
    assert t.get("k1") is None and t.get("k3") is None and t.get("k199") is None
    assert t.get("k2") == account_state(2)
    assert t.get("unwritten") is pending


def test_drop_goes_by_the_partition_of_the_last_write(table: MakeTable) -> None:
    t, producer = table(hot_max=1), FakeProducer()
    put(t, producer, [(1, "moved", {"o": 1}), (1, "other", {"o": 2})])  # "moved" is in the store under 1
    put(t, producer, [(0, "moved", {"o": 3})])  # written again under 0, hot
    t.drop({1})
    assert t.get("moved") == {"o": 3} and "other" not in t
    t.evict()
    assert t.get("moved") == {"o": 3}


def test_dropping_every_partition_with_entries_starts_an_empty_store(table: MakeTable) -> None:
    t, producer = table(hot_max=5), FakeProducer()
    put(t, producer, [(i % 3, f"k{i}", account_state(i)) for i in range(100)])
    t.restore(4, b"restored", b'{"o":1}')
    t.get("k0")  # hot again, read from the store
    pending = t.set("unwritten", {"o": 1})
    t.set("k99", {"o": 2})  # written before, then set: dropped like any written key
    old = Path(t.path)
    t.drop({0, 1, 2, 3, 4, 5})
    assert not old.exists() and Path(t.path).is_dir()  # a new store, the old directory is gone
    assert set(t.keys()) == {"unwritten"} and set(t._hot) == {"unwritten"}
    assert t.get("unwritten") is pending and t.get("k99") is None
    assert t.get("k0") is None and t.get("restored") is None
    put(t, producer, [(2, f"n{i}", account_state(i)) for i in range(20)])  # the new store works
    assert t.get("n1") == account_state(1)
    assert set(t.keys()) == {"unwritten"} | {f"n{i}" for i in range(20)}


def test_a_drop_covers_the_partitions_held_not_every_partition(table: MakeTable) -> None:
    t, producer = table(hot_max=5), FakeProducer()
    old = t.path
    t.drop({0, 1})  # nothing written yet: nothing to do, the store stays
    assert t.path == old
    put(t, producer, [(i % 2, f"k{i}", account_state(i)) for i in range(40)])
    t.drop({1, 2})
    assert t.path == old and set(t.keys()) == {f"k{i}" for i in range(0, 40, 2)}
    t.drop({0})  # the only partition still held
    assert t.path != old and set(t.keys()) == set()


def test_a_partial_drop_deletes_in_bounded_batches(monkeypatch: pytest.MonkeyPatch, table: MakeTable) -> None:
    monkeypatch.setattr(tables_mod, "_RESTORE_BATCH", 16)
    t, producer = table(hot_max=0), FakeProducer()
    put(t, producer, [(i % 2, f"k{i}", account_state(i)) for i in range(200)])
    store = CountingStore(t._db)
    t._db = store  # type: ignore[assignment]
    t.drop({1})
    assert store.writes == -(-100 // 16)
    assert set(t.keys()) == {f"k{i}" for i in range(0, 200, 2)}
    assert t.get("k2") == account_state(2) and t.get("k3") is None
    t._db = store.db


def test_recover_writes_plain_json_records_to_the_store(monkeypatch: pytest.MonkeyPatch, table: MakeTable) -> None:
    records: dict[int, list[tuple[bytes, bytes | None]]] = {
        3: [(f"k{i}".encode(), json.dumps(account_state(i)).encode()) for i in range(300)],
        4: [(b"gone", b'{"o":1}'), (b"twice", b'{"o":1}'), (b"gone", None), (b"twice", b'{"o":2}'),
            (b"k-spaced", b' {"o": 3}')]}
    FakeConsumer.records = records
    monkeypatch.setattr(tables_mod, "AIOKafkaConsumer", FakeConsumer)
    monkeypatch.setattr(tables_mod, "_RESTORE_BATCH", 128)  # several store writes, and a remainder
    t = table(hot_max=10)
    t.set("k-old", {"o": 0})
    t.restore(3, b"stale", b'{"o":-1}')  # recovery starts by dropping what the partitions held
    n = asyncio.run(t.recover("unused:9092", [3, 4]))
    assert n == 305
    assert t._restoring is None  # everything recovered is in the store
    assert set(t._hot) == {"k-old"} and t._written == {}  # recovered records stay bytes until read
    assert "stale" not in t and "gone" not in t
    assert t.get("k1") == account_state(1)
    assert t.get("twice") == {"o": 2}  # the later record of a key wins
    assert t.get("k-spaced") == {"o": 3}
    fp = t.footprint()
    assert fp["keys"] == 302 + 1 and fp["cold"] >= 302  # "cold" is RocksDB's estimate
    t.drop([4])
    assert "twice" not in t and "k-spaced" not in t and "k8" in t


def test_restored_records_are_seen_without_recover_and_a_tombstone_removes_a_hot_key(table: MakeTable) -> None:
    t, producer = table(hot_max=10), FakeProducer()
    put(t, producer, [(2, "hot", {"o": 1})])
    t.restore(2, b"a", b'{"o":1}')
    assert t.get("a") == {"o": 1}  # restored and not flushed yet: still visible
    t.restore(2, b"b", b'{"o":2}')
    assert "b" in t and set(t.keys()) == {"hot", "a", "b"}
    t.restore(2, b"hot", None)
    t.restore(2, b"a", b'{"o":3}')
    assert t.get("hot") is None and "hot" not in t._hot and "hot" not in t._written
    assert t.get("a") == {"o": 3}  # the decoded value read before is replaced, not kept
    assert len(t) == 2


def test_save_evicts_values_a_batch_only_read_in_tables_it_did_not_write(table: MakeTable) -> None:
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


def test_integers_beyond_64_bits_come_back_exact_from_cold_entries(table: MakeTable) -> None:
    t, producer = table(hot_max=1), FakeProducer()
    big = {"o": 1 << 70, "small": [1, 2], "float": 0.5}
    put(t, producer, [(0, "big", copy(big)), *((1, f"k{i}", account_state(i)) for i in range(20))])
    assert t.footprint()["hot"] == 1 and "big" not in t._hot
    back = t.get("big")
    assert back == big and type(back["o"]) is int


def test_close_removes_the_directory_and_may_be_repeated(state_base: Path) -> None:
    t = ChangelogTable("t", "t-changelog", PARTITIONS, hot_max=0, state_dir=str(state_base))
    put(t, FakeProducer(), [(0, f"k{i}", account_state(i)) for i in range(100)])
    assert Path(t.path).is_dir() and Path(t.path).parent == state_base
    assert Path(t.path).name.startswith(f"creditflow-state-{os.getpid()}-")
    t.close()
    assert not Path(t.path).exists()
    t.close()


def test_the_service_closes_its_tables_on_stop_and_an_unclosed_table_is_removed_when_collected(
        state_base: Path) -> None:
    tables = [ChangelogTable(f"t{i}", f"t{i}-changelog", PARTITIONS, state_dir=str(state_base)) for i in range(3)]
    assert len(state_dirs(state_base)) == 3
    svc = PartitionedService(Settings(), "unused:9092", "g", tables)
    asyncio.run(svc.on_stop())
    assert state_dirs(state_base) == []

    forgotten = ChangelogTable("t", "t-changelog", PARTITIONS, state_dir=str(state_base))
    path = Path(forgotten.path)
    assert path.is_dir()
    del forgotten
    gc.collect()
    assert not path.exists()


def test_a_dead_process_s_directory_is_removed_when_a_table_is_created(state_base: Path, table: MakeTable) -> None:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    dead_pid = int(child.stdout)  # exited: its pid is free (reuse this soon is unlikely)
    state_base.mkdir(parents=True)
    dead = state_base / f"creditflow-state-{dead_pid}-x"
    (dead / "sub").mkdir(parents=True)
    (dead / "sub" / "000001.sst").write_bytes(b"x" * 100)
    mine = state_base / f"creditflow-state-{os.getpid()}-x"
    parent = state_base / f"creditflow-state-{os.getppid()}-x"
    unrelated = state_base / "creditflow-other-1-x"
    for d in (mine, parent, unrelated):
        d.mkdir()
    t = table(hot_max=0)
    assert not dead.exists()
    assert mine.is_dir() and parent.is_dir() and unrelated.is_dir()  # live processes' and other names stay
    assert Path(t.path).is_dir()
    for d in (mine, parent, unrelated):
        d.rmdir()


def test_a_store_open_in_another_process_is_kept_whatever_pid_its_name_says(state_base: Path,
                                                                           table: MakeTable) -> None:
    """Containers sharing CREDITFLOW_STATE_DIR have separate pid spaces: the name's pid may be dead
    here while the store is open there. RocksDB's lock on LOCK is what counts."""
    state_base.mkdir(parents=True)
    code = ("import sys, time; from streams.runtime.changelog import ChangelogTable; "
            f"t = ChangelogTable('t', 't-changelog', 6, state_dir={str(state_base)!r}); "
            "print(t.path, flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        held = Path(holder.stdout.readline().strip())
        # Named as if its process were gone (pids never exceed 2**22 on Linux).
        renamed = held.with_name("creditflow-state-99999999-held")
        held.rename(renamed)
        table(hot_max=0)
        assert renamed.is_dir() and (renamed / "LOCK").exists()
        holder.kill()
        holder.wait()
        table(hot_max=0)  # the lock went with its process: now it is stale
        assert not renamed.exists()
    finally:
        holder.kill()
        holder.wait()


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
