"""Property tests: whatever bytes or dicts arrive, decode+validate ends in exactly one of
"valid event", DecodeError or a validation reason -- never another exception."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.catalogue import versions
from streams.wire.codec import DecodeError, Decoder, ErrorKind, encode_single_object, encode_single_object_with
from streams.wire.validation import validate_event
from tests.unit.wire.test_codec import NOW_MS, sample_event

DECODER = Decoder("InteractionEvent")
GOOD = encode_single_object(sample_event(), "InteractionEvent")
V1 = versions("InteractionEvent")[0]
GOOD_V1 = encode_single_object_with(
    {k: v for k, v in sample_event().items() if k in {f["name"] for f in V1.schema_json["fields"]}}, V1
)
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(data: bytes) -> str:
    """Decode then validate; the only permitted results are returned as labels."""
    try:
        ev = DECODER.decode(data)
    except DecodeError as exc:
        assert isinstance(exc.kind, ErrorKind)
        assert exc.message
        return exc.kind.value
    assert isinstance(ev, dict)
    reason = validate_event(ev, NOW_MS)
    return "VALID" if reason is None else "INVALID"


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    outcome(data)


@SETTINGS
@given(st.sampled_from([b"\xc3\x01", b"\x00"]), st.binary(max_size=300))
def test_random_bodies_behind_valid_looking_headers(magic: bytes, rest: bytes) -> None:
    # Behind the real fingerprint so fastavro actually parses the random body.
    fp = GOOD[2:10] if magic == b"\xc3\x01" else b""
    assert outcome(magic + fp + rest) in {k.value for k in ErrorKind} | {"VALID", "INVALID"}


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from([GOOD, GOOD_V1])))
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        else:
            data[i] = draw(st.integers(0, 255))
    return bytes(data)


@SETTINGS
@given(mutated())
def test_mutated_encodings(data: bytes) -> None:
    outcome(data)


@SETTINGS
@given(st.integers(0, len(GOOD) - 1))
def test_every_truncation_is_truncated(n: int) -> None:
    assert outcome(GOOD[:n]) == "TRUNCATED"


@SETTINGS
@given(st.binary(min_size=1, max_size=20))
def test_any_appended_bytes_are_trailing(extra: bytes) -> None:
    assert outcome(GOOD + extra) == "TRAILING_BYTES"


ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=5),
    st.lists(st.one_of(st.text(max_size=5), st.integers()), max_size=3),
    st.dictionaries(st.text(max_size=3), st.one_of(st.text(max_size=3), st.integers()), max_size=2),
)


@st.composite
def mutated_event(draw: st.DrawFn) -> dict[str, Any]:
    ev = sample_event()
    fields = sorted(ev)
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(fields))
        action = draw(st.sampled_from(["replace", "delete", "nudge"]))
        if action == "delete":
            ev.pop(name, None)
        elif action == "nudge" and isinstance(ev.get(name), int):
            ev[name] = ev[name] + draw(st.integers(-(2**40), 2**40))
        else:
            ev[name] = draw(ANY_VALUE)
    return ev


@SETTINGS
@given(mutated_event())
def test_mutated_event_dicts(ev: dict[str, Any]) -> None:
    reason = validate_event(ev, NOW_MS)
    assert reason is None or (isinstance(reason, str) and reason)
    if reason is None:
        # Whatever validation accepts must encode, decode back, and still validate: the producer
        # relies on this to never send something the processor would dead-letter.
        decoded = DECODER.decode(encode_single_object(ev, "InteractionEvent"))
        assert validate_event(decoded, NOW_MS) is None
        assert decoded["event_id"] == ev["event_id"] and decoded["occurred_at"] == ev["occurred_at"]


def _fastavro_resolution(data: bytes) -> dict[str, Any] | None:
    """Reference: fastavro's own writer->reader resolution of the same v1 body."""
    import io

    from fastavro import parse_schema, schemaless_reader

    from streams.wire.codec import strip_logical_types

    buf = io.BytesIO(data[10:])
    try:
        rec = schemaless_reader(
            buf,
            parse_schema(strip_logical_types(V1.schema_json), named_schemas={}),
            DECODER.reader_schema,
        )
    except Exception:
        return None
    return rec if isinstance(rec, dict) and buf.tell() == len(data) - 10 else None


@SETTINGS
@given(mutated())
def test_additive_fast_path_equals_fastavro_resolution(data: bytes) -> None:
    if data[:10] != GOOD_V1[:10]:
        return
    try:
        ours: dict[str, Any] | None = DECODER.decode(data)
    except DecodeError:
        ours = None
    assert ours == _fastavro_resolution(data)


def test_v1_reads_take_the_additive_fast_path_and_get_fresh_containers() -> None:
    a, b = DECODER.decode(GOOD_V1), DECODER.decode(GOOD_V1)
    plan = DECODER._by_fp[V1.fingerprint]
    assert not isinstance(plan, DecodeError) and plan.reader is None and plan.defaults is not None
    assert a == _fastavro_resolution(GOOD_V1)
    a["attributes"]["x"] = "y"  # a consumer mutating one record must not leak into the next
    assert b["attributes"] == {} and DECODER.decode(GOOD_V1)["attributes"] == {}
