"""The sink's undecoded path: container files any Avro reader accepts, and the replay guard read
from headers. (That ClickHouse reads them into the right rows is covered against chDB in
tests/integration/test_sink_outage.py and the pipeline tests.)"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import fastavro

from schemas.catalogue import versions
from sinks.avro_container import ContainerBuilder
from streams.wire.codec import Decoder, encode_single_object, encode_single_object_with
from streams.wire.headers import SOURCE_OFFSET_HEADER, source_offset, source_offset_header
from tests.metered import metered


@dataclass
class _Rec:
    value: bytes | None
    headers: list[tuple[str, bytes]]


def _enriched(n: int) -> list[dict[str, Any]]:
    return metered(n, accounts=20, seed=5, prefix="avro")


def _stamped(records: list[dict[str, Any]]) -> list[_Rec]:
    return [_Rec(encode_single_object(r, "UsageEnriched"), [source_offset_header(r["source_offset"])])
            for r in records]


def _read(blob: bytes) -> list[dict[str, Any]]:
    return list(fastavro.reader(io.BytesIO(blob)))  # type: ignore[arg-type]


def test_the_container_holds_exactly_the_records_as_fastavro_reads_them() -> None:
    records = _enriched(200)
    block = ContainerBuilder().guarded(_stamped(records), guard=-1)
    assert block is not None
    assert (block.rows, block.dropped, block.guard_after) == (200, 0, 199)
    decoded = [Decoder("UsageEnriched").decode(r.value or b"") for r in _stamped(records)]
    read = _read(block.blob)
    assert [r["event_id"] for r in read] == [r["event_id"] for r in records]
    # Logical types are in the header, so a reader turns occurred_at into a datetime.
    assert [int(r["occurred_at"].timestamp() * 1000) for r in read] == [r["occurred_at"] for r in decoded]
    assert [r["debits"] for r in read] == [r["debits"] for r in decoded]
    assert any(r["debits"] for r in read), "the workload must exercise grant debits"


def test_the_guard_drops_replayed_offsets_and_keeps_the_running_maximum() -> None:
    records = _enriched(30)
    stamped = _stamped(records)
    # A processor replay: offsets 10..19 are sent again after 0..29.
    replayed = stamped + stamped[10:20]
    block = ContainerBuilder().guarded(replayed, guard=4)
    assert block is not None
    assert block.dropped == 5 + 10
    assert block.guard_after == 29
    assert [r["source_offset"] for r in _read(block.blob)] == list(range(5, 30))


def test_a_batch_that_cannot_go_undecoded_returns_none() -> None:
    records = _enriched(5)
    builder = ContainerBuilder()
    unstamped = [_Rec(r.value, []) for r in _stamped(records)]
    assert builder.guarded(unstamped, -1) is None
    v1 = versions("UsageEnriched")[0]
    v1_fields = {f["name"] for f in v1.schema_json["fields"]}
    older = _Rec(encode_single_object_with({k: v for k, v in records[4].items() if k in v1_fields}, v1),
                 [source_offset_header(4)])
    mixed = [*_stamped(records[:4]), older]
    assert builder.guarded(mixed, -1) is None
    unknown = [_Rec(b"\xc3\x01" + b"\x00" * 8 + b"body", [source_offset_header(0)])]
    assert builder.guarded(unknown, -1) is None
    assert builder.guarded([_Rec(b"not avro", [source_offset_header(0)])], -1) is None
    assert builder.guarded([_Rec(None, [source_offset_header(0)])], -1) is None
    # A batch of one older writer schema is fine on its own: the header names that schema.
    only_v1 = builder.guarded([mixed[-1]], -1)
    assert only_v1 is not None and _read(only_v1.blob)[0]["event_id"] == records[4]["event_id"]


def test_source_offset_header_round_trip_and_malformed_stamps() -> None:
    for offset in (0, 1, 2**40 + 7):
        assert source_offset([source_offset_header(offset)]) == offset
    assert source_offset([]) is None
    assert source_offset(None) is None
    assert source_offset([(SOURCE_OFFSET_HEADER, b"\x01\x02")]) is None
    assert source_offset([("other", (5).to_bytes(8, "big"))]) is None
