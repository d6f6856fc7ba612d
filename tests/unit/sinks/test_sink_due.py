"""Which buffered partitions the sink stores together: when one is due (by age or by the row bound)
every partition with rows goes in the same store, except a replayed batch, which waits until it
reaches exactly the end of its recorded plan."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from aiokafka import TopicPartition

from sinks.service import ClickHouseSink, _Partition, store_id
from streams.runtime.topics import topic_names
from streams.settings import Settings


@dataclass
class _Rec:
    offset: int


def _sink(tmp_path: Path, server: bool = False) -> ClickHouseSink:
    url = "http://default:@localhost:9/default" if server else f"chdb://{tmp_path / 'ch'}"
    settings = Settings(data_dir=tmp_path, clickhouse_url=url, sink_flush_seconds=1.0, sink_batch_rows=1_000)
    return ClickHouseSink(settings, "localhost:9", topic_names(settings), client_factory=lambda: None)


def _part(sink: ClickHouseSink, p: int, offsets: range, age: float, replay_end: int | None = None,
          store: str = "") -> _Partition:
    topic = next(iter(sink.routes))
    part = _Partition(TopicPartition(topic, p), sink.routes[topic], [_Rec(o) for o in offsets],
                      replay_end=replay_end, replay_store=store, first_at=time.monotonic() - age)
    sink.parts[part.tp] = part
    return part


def test_nothing_is_due_before_the_age_or_the_row_bound(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    _part(sink, 0, range(10), age=0.2)
    _part(sink, 1, range(10), age=0.5)
    assert sink._due(force=False) == []
    assert len(sink._due(force=True)) == 2


def test_one_partition_due_by_age_takes_every_partition_with_rows(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    old = _part(sink, 0, range(10), age=1.5)
    young = _part(sink, 1, range(5), age=0.1)
    _part(sink, 2, range(0), age=5.0)  # empty: nothing to store
    assert {p.tp for p in sink._due(force=False)} == {old.tp, young.tp}


def test_the_row_bound_counts_every_partition(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    _part(sink, 0, range(600), age=0.0)
    assert sink._due(force=False) == []
    _part(sink, 1, range(400), age=0.0)
    assert len(sink._due(force=False)) == 2


def test_a_replayed_batch_waits_for_the_end_of_its_plan(tmp_path: Path) -> None:
    # A ClickHouse server: every partition batch is a store of its own, so the others go on.
    sink = _sink(tmp_path, server=True)
    assert not sink.combine
    replay = _part(sink, 0, range(100, 150), age=3.0, replay_end=199)
    other = _part(sink, 1, range(10), age=1.5)
    assert [p.tp for p in sink._due(force=False)] == [other.tp]
    assert [p.tp for p in sink._due(force=True)] == [other.tp]  # not even forced
    replay.records.extend(_Rec(o) for o in range(150, 260))
    assert {p.tp for p in sink._due(force=False)} == {replay.tp, other.tp}


def test_with_chdb_a_plan_recorded_on_its_own_is_replayed_alone_first(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    assert sink.combine
    replay = _part(sink, 0, range(100, 150), age=3.0, replay_end=199)
    _part(sink, 1, range(10), age=1.5)
    assert sink._due(force=True) == []
    replay.records.extend(_Rec(o) for o in range(150, 260))
    assert sink._due(force=False) == [replay]


def test_a_recorded_store_is_re_formed_only_whole(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    a = _part(sink, 0, range(100, 150), age=3.0, replay_end=149, store="s1")
    b = _part(sink, 1, range(7, 9), age=3.0, replay_end=10, store="s1")
    c = _part(sink, 2, range(10), age=3.0)
    sink.replay_stores["s1"] = {a.tp: 149, b.tp: 10}
    # b has not reached the end of its batch yet; c, not in the store, may go on.
    assert sink._due(force=True) == [c]
    c.records = []
    b.records.extend(_Rec(o) for o in range(9, 13))
    assert sink._due(force=False) == [a, b]
    del sink.replay_stores["s1"]
    a.replay_store = b.replay_store = ""
    a.replay_end = b.replay_end = None
    c.records.append(_Rec(10))
    assert {p.tp for p in sink._due(force=False)} == {a.tp, b.tp, c.tp}


def test_a_store_that_cannot_be_re_formed_is_given_up_with_a_warning(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    a = _part(sink, 0, range(100, 150), age=3.0, replay_end=149, store="s1")
    b = _part(sink, 1, range(7, 20), age=3.0)  # its offset was moved: not replaying
    sink.replay_stores["s1"] = {a.tp: 149, b.tp: 10}
    assert sink._due(force=False) == [a]  # alone, as a plan of its own
    assert "s1" not in sink.replay_stores and a.replay_store == ""


def test_store_names_depend_on_the_batches_only() -> None:
    one = [("t", 0, 1, 5), ("t", 1, 7, 9)]
    assert store_id(one) == store_id(list(reversed(one)))
    assert store_id(one) != store_id([("t", 0, 1, 5), ("t", 1, 7, 10)])
    assert store_id(one) != store_id(one[:1])
