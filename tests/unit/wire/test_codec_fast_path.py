"""cavro reads and writes bodies where it can (``streams.wire.codec``): same bytes and dicts as fastavro,
fastavro's errors for everything it refuses."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.catalogue import SchemaVersion, get_catalogue, versions
from streams.credits.meter import Meter, RawRecord
from streams.credits.policy import load_policy
from streams.synthetic.generator import Generator
from streams.wire import codec
from streams.wire.codec import (
    SINGLE_OBJECT_HEADER_LEN,
    DecodeError,
    Decoder,
    ErrorKind,
    encode_single_object,
    encode_single_object_with,
)


def _fastavro_body(record: dict[str, Any], sv: SchemaVersion) -> bytes:
    return codec._body(record, sv.parsed)


@pytest.fixture(scope="module")
def traffic() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Generated events and grants, and what the meter makes of them (UsageEnriched, samples)."""
    gen = Generator(accounts=300, seed=11)
    grants = gen.grants()
    events = list(gen.events(3000))
    encoded = [encode_single_object(e, "InteractionEvent") for e in events]
    meter = Meter(load_policy(), Decoder("InteractionEvent"), Decoder("CreditGrant"))
    result = meter.meter([RawRecord("t", i % 3, i, None, b) for i, b in enumerate(encoded)], {}.get, {}.get,
                         time.time_ns() // 1_000_000)
    assert len(result.enriched) == len(events) and result.samples
    return events + grants, result.enriched, result.samples


def test_fast_writer_gives_fastavros_bytes(traffic: Any) -> None:
    inputs, enriched, samples = traffic
    cat = get_catalogue()
    cases = [(r, cat.latest("InteractionEvent" if "event_id" in r and "model" in r else "CreditGrant"))
             for r in inputs]
    cases += [(r, cat.latest("UsageEnriched")) for r in enriched]
    cases += [(r, cat.latest("RefinementSample")) for r in samples]
    for record, sv in cases:
        assert codec._version_body(record, sv) == _fastavro_body(record, sv), sv.name
    # ...and it was cavro that wrote them.
    assert all(codec._FAST_WRITERS[sv.fingerprint][1] is not None for _, sv in cases)


def test_fast_reader_gives_fastavros_dicts_and_is_used(traffic: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _, enriched, _ = traffic
    cat = get_catalogue()
    sv = cat.latest("UsageEnriched")
    messages = [encode_single_object(r, "UsageEnriched") for r in enriched]
    dec = Decoder("UsageEnriched")
    plan = dec._single_object_plan(sv.fingerprint)
    slow = [codec._read_body_fastavro(m, SINGLE_OBJECT_HEADER_LEN, plan) for m in messages]

    def refuse(*_: Any) -> dict[str, Any]:
        raise AssertionError("a valid body went through fastavro")

    monkeypatch.setattr(codec, "_read_body_fastavro", refuse)
    assert [dec.decode(m) for m in messages] == slow == [dict(r) for r in enriched]


def test_older_writer_with_added_defaults_reads_the_same_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    v1, v2 = versions("InteractionEvent")[:2]
    gen = Generator(accounts=50, seed=3)
    old_fields = {f["name"] for f in v1.schema_json["fields"]}
    olds = [{k: v for k, v in e.items() if k in old_fields} for e in gen.events(200)]
    messages = [encode_single_object_with(e, v1) for e in olds]
    dec = Decoder("InteractionEvent")
    plan = dec._single_object_plan(v1.fingerprint)
    assert plan.reader is None and plan.fast is not None, "v1 -> v2 only adds defaulted fields"
    slow = [codec._read_body_fastavro(m, SINGLE_OBJECT_HEADER_LEN, plan) for m in messages]
    fast = [dec.decode(m) for m in messages]
    assert fast == slow
    assert set(fast[0]) == {f["name"] for f in v2.schema_json["fields"]}
    # Containers that default to [] / {} are fresh per record, as fastavro's path makes them.
    empties = [name for name, _ in plan.empty]
    if empties:
        assert fast[0][empties[0]] is not fast[1][empties[0]]


def test_bad_bodies_get_fastavros_verdicts(traffic: Any) -> None:
    inputs, _, _ = traffic
    dec = Decoder("InteractionEvent")
    good = encode_single_object(inputs[0], "InteractionEvent")
    plan = dec._single_object_plan(good[2:SINGLE_OBJECT_HEADER_LEN])
    bad = [good + b"\x00", good + b"tail", *(good[:n] for n in range(SINGLE_OBJECT_HEADER_LEN, len(good), 7))]
    # A string length pointing past the end, and a negative one.
    bad += [good[:SINGLE_OBJECT_HEADER_LEN] + b"\x7f" + good[SINGLE_OBJECT_HEADER_LEN + 1:],
            good[:SINGLE_OBJECT_HEADER_LEN] + b"\x01" + good[SINGLE_OBJECT_HEADER_LEN + 1:]]
    for data in bad:
        with pytest.raises(DecodeError) as fast_err:
            dec.decode(data)
        with pytest.raises(DecodeError) as slow_err:
            codec._read_body_fastavro(data, SINGLE_OBJECT_HEADER_LEN, plan)
        assert (fast_err.value.kind, fast_err.value.message) == (slow_err.value.kind, slow_err.value.message)
    with pytest.raises(DecodeError) as err:
        dec.decode(good + b"\x00")
    assert err.value.kind is ErrorKind.TRAILING_BYTES


def test_values_cavro_refuses_are_written_or_refused_by_fastavro(traffic: Any) -> None:
    inputs, _, _ = traffic
    sv = get_catalogue().latest("InteractionEvent")
    event = dict(inputs[0])
    # A datetime for a timestamp-millis field: only fastavro's logical types take it.
    as_datetime = dict(event, occurred_at=datetime.fromtimestamp(event["occurred_at"] / 1000, UTC))
    assert codec._version_body(as_datetime, sv) == _fastavro_body(event, sv)
    # An unknown enum symbol: the error is fastavro's.
    with pytest.raises(ValueError, match="is not in list"):
        encode_single_object(dict(event, plan="PLATINUM"), "InteractionEvent")


def test_fast_false_is_fastavro_only(traffic: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs, _, _ = traffic
    sv = get_catalogue().latest("InteractionEvent")
    event = inputs[0]
    message = encode_single_object_with(event, sv, fast=False)
    assert message[SINGLE_OBJECT_HEADER_LEN:] == _fastavro_body(event, sv)
    dec = Decoder("InteractionEvent", fast=False)
    assert dec._single_object_plan(sv.fingerprint).fast is None
    assert Decoder("InteractionEvent")._single_object_plan(sv.fingerprint).fast is not None

    def refuse(*_: Any) -> bytes:
        raise AssertionError("cavro wrote a body that fastavro was asked for")

    monkeypatch.setattr(codec, "_version_body", refuse)
    assert encode_single_object_with(event, sv, fast=False) == message
    assert dec.decode(message) == Decoder("InteractionEvent").decode(message)
