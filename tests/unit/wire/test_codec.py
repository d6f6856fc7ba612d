"""The codec against the Avro spec, the reference implementation, and a fake schema registry."""

from __future__ import annotations

import io
import json
import re
import socket
from datetime import UTC, datetime
from typing import Any

import avro.io
import avro.schema
import pytest

from schemas.catalogue import get_catalogue, latest, versions
from streams.wire.codec import (
    DecodeError,
    Decoder,
    ErrorKind,
    SchemaRegistryClient,
    SchemaRegistryError,
    encode_confluent,
    encode_single_object,
    encode_single_object_with,
)
from streams.wire.dead_letters import build_dead_letter, encode_dead_letter
from tests.fake_registry import FakeRegistry

NOW_MS = 1_700_000_000_000


def sample_event(**overrides: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "event_id": "evt-0001",
        "occurred_at": NOW_MS,
        "account_id": "acct-42",
        "team_id": "team-7",
        "org_id": None,
        "plan": "PRO",
        "credit_grant_id": None,
        "model": "model-large",
        "surface": "CHAT",
        "session_id": "sess-9",
        "turn_index": 3,
        "input_tokens": 1200,
        "output_tokens": 350,
        "cached_tokens": 0,
        "context_window_tokens": 120_000,
        "reasoning_steps": 4,
        "thinking_tokens": 900,
        "tool_calls": 2,
        "tool_names": ["search", "calc"],
        "latency_ms": 2300,
        "outcome": "SUCCESS",
        "error_code": None,
        "ip_hash": "ab12",
        "device_hash": None,
        "payment_hash": None,
        "prompt_fingerprint": "f00d",
        "context_uniqueness": 0.8,
        "attributes": {"region": "eu"},
    }
    ev.update(overrides)
    return ev


# -- an independent CRC-64-AVRO, straight from the Avro specification ---------------------------

_EMPTY = 0xC15D213AA4D7A795
_TABLE = []
for _i in range(256):
    _fp = _i
    for _ in range(8):
        _fp = (_fp >> 1) ^ (_EMPTY & -(_fp & 1))
    _TABLE.append(_fp)


def spec_rabin(data: bytes) -> int:
    fp = _EMPTY
    for b in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ b) & 0xFF]
    return fp


def avro_pkg_canonical(schema_json: dict[str, Any]) -> str:
    # avro-python 1.12 leaves logical-typed primitives as {"type":"long"}; the spec's [PRIMITIVES]
    # rule (and Java, and fastavro) reduce them to "long". Apply that rule to compare the rest.
    text = avro.schema.parse(json.dumps(schema_json)).canonical_form
    return re.sub(r'\{"type":"(null|boolean|int|long|float|double|bytes|string)"\}', r'"\1"', text)


def avro_pkg_write(schema_json: dict[str, Any], record: dict[str, Any]) -> bytes:
    rec = dict(record)
    rec["occurred_at"] = datetime.fromtimestamp(record["occurred_at"] / 1000, tz=UTC)
    buf = io.BytesIO()
    avro.io.DatumWriter(avro.schema.parse(json.dumps(schema_json))).write(rec, avro.io.BinaryEncoder(buf))
    return buf.getvalue()


def avro_pkg_read(schema_json: dict[str, Any], body: bytes) -> dict[str, Any]:
    schema = avro.schema.parse(json.dumps(schema_json))
    rec = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(body)))
    assert isinstance(rec, dict)
    rec["occurred_at"] = int(rec["occurred_at"].timestamp() * 1000)
    return rec


# -- single-object encoding ----------------------------------------------------------------------


def test_single_object_round_trip_keeps_every_field_and_raw_millis() -> None:
    data = encode_single_object(sample_event(), "InteractionEvent")
    decoded = Decoder("InteractionEvent").decode(data)
    assert decoded == sample_event()
    assert type(decoded["occurred_at"]) is int  # epoch millis, not datetime


def test_single_object_header_is_magic_plus_little_endian_spec_fingerprint() -> None:
    sv = latest("InteractionEvent")
    data = encode_single_object(sample_event(), "InteractionEvent")
    assert data[:2] == b"\xc3\x01"
    assert avro_pkg_canonical(sv.schema_json) == sv.canonical
    assert data[2:10] == spec_rabin(sv.canonical.encode()).to_bytes(8, "little")


def test_every_catalogue_fingerprint_matches_the_spec_algorithm() -> None:
    cat = get_catalogue()
    for name in cat.names():
        for sv in cat.versions(name):
            assert sv.fingerprint == spec_rabin(sv.canonical.encode()).to_bytes(8, "little")
            assert cat.by_fingerprint(sv.fingerprint) is sv


def test_reference_avro_encoding_is_decoded_by_our_codec() -> None:
    sv = latest("InteractionEvent")
    body = avro_pkg_write(sv.schema_json, sample_event())
    header = b"\xc3\x01" + spec_rabin(sv.canonical.encode()).to_bytes(8, "little")
    assert Decoder("InteractionEvent").decode(header + body) == sample_event()


def test_our_encoding_is_decoded_by_reference_avro() -> None:
    sv = latest("InteractionEvent")
    data = encode_single_object(sample_event(), "InteractionEvent")
    assert avro_pkg_read(sv.schema_json, data[10:]) == sample_event()
    confluent = encode_confluent(sample_event(), 7, sv.parsed)
    assert avro_pkg_read(sv.schema_json, confluent[5:]) == sample_event()


def test_reference_avro_confluent_framing_is_decoded(registry: FakeRegistry) -> None:
    sv = latest("InteractionEvent")
    client = SchemaRegistryClient(registry.url)
    schema_id = client.register("interaction-events-value", sv.schema_json)
    data = b"\x00" + schema_id.to_bytes(4, "big") + avro_pkg_write(sv.schema_json, sample_event())
    assert Decoder("InteractionEvent", client).decode(data) == sample_event()


def test_dead_letter_round_trip() -> None:
    dl = build_dead_letter(
        "interaction-events",
        3,
        42,
        b"acct-1",
        b"\x01junk",
        [("trace", b"t1"), ("x", None)],
        ErrorKind.BAD_MAGIC,
        "unknown magic byte 01",
        NOW_MS,
    )
    assert dl["dead_letter_id"] == "interaction-events:3:42"
    decoded = Decoder("DeadLetter").decode(encode_dead_letter(dl))
    assert decoded == dl
    assert decoded["headers"] == [{"key": "trace", "value": b"t1"}, {"key": "x", "value": None}]


def test_dead_letter_of_tombstone_and_unknown_kind() -> None:
    dl = build_dead_letter("t", 0, 1, None, None, None, "TRUNCATED", "x" * 5000, NOW_MS)
    assert dl["original"] == b"" and dl["key"] is None and dl["headers"] == []
    assert len(dl["message"]) <= 2000
    with pytest.raises(ValueError):
        build_dead_letter("t", 0, 1, None, b"", None, "NOT_A_KIND", "m", NOW_MS)


# -- failure kinds -------------------------------------------------------------------------------


def _kind(data: bytes, decoder: Decoder | None = None) -> ErrorKind:
    with pytest.raises(DecodeError) as info:
        (decoder or Decoder("InteractionEvent")).decode(data)
    return info.value.kind


def test_bad_magic() -> None:
    good = encode_single_object(sample_event(), "InteractionEvent")
    assert _kind(b"\x01" + good[1:]) is ErrorKind.BAD_MAGIC
    assert _kind(b"\xc3\x02" + good[2:]) is ErrorKind.BAD_MAGIC
    assert _kind(b'{"event_id": "json"}') is ErrorKind.BAD_MAGIC


def test_unknown_fingerprint() -> None:
    good = encode_single_object(sample_event(), "InteractionEvent")
    with pytest.raises(DecodeError) as err:
        Decoder("InteractionEvent").decode(good[:2] + b"\x00" * 8 + good[10:])
    assert err.value.kind is ErrorKind.UNKNOWN_SCHEMA
    assert "0000000000000000" in err.value.message


def test_truncated_at_every_length() -> None:
    good = encode_single_object(sample_event(), "InteractionEvent")
    decoder = Decoder("InteractionEvent")
    # Cutting anywhere is TRUNCATED; the only exception is a cut between the 2 magic bytes of a
    # header (C3 alone) which is also TRUNCATED, so every prefix must be.
    for n in range(len(good)):
        assert _kind(good[:n], decoder) is ErrorKind.TRUNCATED, n


def test_trailing_bytes() -> None:
    good = encode_single_object(sample_event(), "InteractionEvent")
    with pytest.raises(DecodeError) as err:
        Decoder("InteractionEvent").decode(good + b"\x00\x00")
    assert err.value.kind is ErrorKind.TRAILING_BYTES
    assert "2 bytes" in err.value.message


def test_record_of_another_type_is_a_decode_error() -> None:
    grant = {
        "event_type": "ISSUED",
        "grant_id": "g1",
        "account_id": "a1",
        "campaign": "launch",
        "amount_micro": 5_000_000,
        "granted_at": NOW_MS,
        "expires_at": NOW_MS + 86_400_000,
        "priority": 0,
        "occurred_at": NOW_MS,
        "reason": None,
    }
    with pytest.raises(DecodeError) as err:
        Decoder("InteractionEvent").decode(encode_single_object(grant, "CreditGrant"))
    assert err.value.kind is ErrorKind.DECODE_ERROR
    assert "CreditGrant" in err.value.message


def test_corrupt_utf8_is_a_decode_error() -> None:
    good = bytearray(encode_single_object(sample_event(), "InteractionEvent"))
    pos = good.index(b"evt-0001")
    good[pos] = 0xFF
    assert _kind(bytes(good)) is ErrorKind.DECODE_ERROR


def test_confluent_without_registry_is_unknown_schema() -> None:
    data = encode_confluent(sample_event(), 1, latest("InteractionEvent").parsed)
    assert _kind(data) is ErrorKind.UNKNOWN_SCHEMA
    assert _kind(b"\x00\x00\x01") is ErrorKind.TRUNCATED
    assert _kind(b"") is ErrorKind.TRUNCATED


def test_v1_writer_is_resolved_to_v2_reader_with_defaults() -> None:
    v1 = versions("InteractionEvent")[0]
    v1_fields = {f["name"] for f in v1.schema_json["fields"]}
    old = {k: v for k, v in sample_event().items() if k in v1_fields}
    decoded = Decoder("InteractionEvent").decode(encode_single_object_with(old, v1))
    assert decoded == {
        **old,
        "org_id": None,
        "cached_tokens": 0,
        "payment_hash": None,
        "context_uniqueness": None,
        "attributes": {},
    }


# -- the registry path ---------------------------------------------------------------------------


def test_confluent_round_trip_through_registry_with_cached_lookups(registry: FakeRegistry) -> None:
    sv = latest("InteractionEvent")
    producer_side = SchemaRegistryClient(registry.url)
    schema_id = producer_side.register("interaction-events-value", sv.schema_json)
    assert producer_side.register("interaction-events-value", sv.schema_json) == schema_id  # cached
    data = encode_confluent(sample_event(), schema_id, sv.parsed)
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == schema_id

    decoder = Decoder("InteractionEvent", SchemaRegistryClient(registry.url))
    for _ in range(3):
        assert decoder.decode(data) == sample_event()
    gets = [r for r in registry.requests if r[0] == "GET"]
    assert gets == [("GET", f"/schemas/ids/{schema_id}")]
    assert [r for r in registry.requests if r[0] == "POST"] == [
        ("POST", "/subjects/interaction-events-value/versions")
    ]


def test_confluent_v1_writer_from_registry_resolves_to_v2(registry: FakeRegistry) -> None:
    v1 = versions("InteractionEvent")[0]
    client = SchemaRegistryClient(registry.url)
    schema_id = client.register("interaction-events-value", v1.schema_json)
    old = {k: v for k, v in sample_event().items() if k in {f["name"] for f in v1.schema_json["fields"]}}
    decoded = Decoder("InteractionEvent", SchemaRegistryClient(registry.url)).decode(
        encode_confluent(old, schema_id, v1.parsed)
    )
    assert decoded["cached_tokens"] == 0 and decoded["attributes"] == {} and decoded["event_id"] == "evt-0001"


def test_unknown_registry_id_is_unknown_schema_without_retries(registry: FakeRegistry) -> None:
    decoder = Decoder("InteractionEvent", SchemaRegistryClient(registry.url, sleep=lambda s: None))
    data = encode_confluent(sample_event(), 999, latest("InteractionEvent").parsed)
    assert _kind(data, decoder) is ErrorKind.UNKNOWN_SCHEMA
    assert len(registry.requests) == 1


def test_registry_down_is_registry_unavailable_after_backoff_retries(registry: FakeRegistry) -> None:
    sv = latest("InteractionEvent")
    schema_id = SchemaRegistryClient(registry.url).register("s-value", sv.schema_json)
    registry.requests.clear()
    registry.fail_with = 503
    sleeps: list[float] = []
    client = SchemaRegistryClient(registry.url, retries=3, backoff=0.1, sleep=sleeps.append)
    decoder = Decoder("InteractionEvent", client)
    data = encode_confluent(sample_event(), schema_id, sv.parsed)
    with pytest.raises(DecodeError) as err:
        decoder.decode(data)
    assert err.value.kind is ErrorKind.REGISTRY_UNAVAILABLE
    assert "503" in err.value.message
    assert len(registry.requests) == 4  # 1 try + 3 retries
    assert sleeps == pytest.approx([0.1, 0.2, 0.4])
    # Unavailability is not cached: once the registry is back, the same record decodes.
    registry.fail_with = None
    assert decoder.decode(data) == sample_event()


def test_registry_unreachable_is_registry_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connections are refused
    client = SchemaRegistryClient(f"http://127.0.0.1:{port}", retries=2, sleep=lambda s: None, timeout=1)
    data = encode_confluent(sample_event(), 1, latest("InteractionEvent").parsed)
    assert _kind(data, Decoder("InteractionEvent", client)) is ErrorKind.REGISTRY_UNAVAILABLE


def test_registry_refusal_on_register_is_not_retried(registry: FakeRegistry) -> None:
    registry.fail_with = 409
    client = SchemaRegistryClient(registry.url, sleep=lambda s: None)
    with pytest.raises(SchemaRegistryError) as info:
        client.register("x-value", latest("InteractionEvent").schema_json)
    assert info.value.status == 409
    assert len(registry.requests) == 1


def test_registry_url_credentials_become_basic_auth() -> None:
    client = SchemaRegistryClient("https://user:p%40ss@registry.example:8081/")
    assert client.base_url == "https://registry.example:8081"
    assert client._headers["Authorization"] == "Basic dXNlcjpwQHNz"  # base64("user:p@ss")


def test_fingerprint_matches_the_java_test_vector() -> None:
    from schemas.catalogue import rabin_fingerprint

    # SchemaNormalization.parsingFingerprint64 of "null" in the Java implementation.
    assert rabin_fingerprint('"null"') == (0x63DD24E7CC258F8A).to_bytes(8, "little")
