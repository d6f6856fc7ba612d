"""Avro on the wire: single-object encoding (local catalogue) and the Confluent format (registry).

Decoded records carry raw Avro values: timestamps stay epoch milliseconds (``int``), never
``datetime``. That is what the pure logic downstream works in, and skipping fastavro's logical-type
conversion is a large part of what keeps decoding at a few microseconds per event.

Every failure of :meth:`Decoder.decode` is a :class:`DecodeError` whose ``kind`` is a DeadLetter
``error_kind`` symbol, so a caller needs exactly one ``except`` to route a bad record to
dead-letters and carry on with the partition.

Bodies are read and written by cavro where it can (a schema without logical types, and a record it
takes as is), by fastavro otherwise. Measured on the processor's records (``tests/benchmarks``):
fastavro 10.3 µs to read an InteractionEvent and 13.5 µs to write a UsageEnriched, cavro 4.3
(3.1, and 1.2 for the end-of-body check) and 8.1. The two give the same bytes and the same dicts
(``tests/unit/test_codec_fast_path.py``); any record cavro refuses or any body it cannot read whole
goes through fastavro, so errors keep the types, kinds and messages fastavro gives them, and so do
values only fastavro's logical types take (a ``datetime`` for a timestamp).
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, cast

import cavro
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import expand_schema

from schemas.catalogue import Catalogue, SchemaVersion, check_compatible, get_catalogue, rabin_fingerprint

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
SINGLE_OBJECT_HEADER_LEN = 10  # 2 magic + 8 fingerprint
CONFLUENT_MAGIC = 0
CONFLUENT_HEADER_LEN = 5  # 1 magic + 4 schema id


class ErrorKind(StrEnum):
    """Mirror of the DeadLetterErrorKind enum of the latest DeadLetter schema."""

    BAD_MAGIC = "BAD_MAGIC"
    UNKNOWN_SCHEMA = "UNKNOWN_SCHEMA"
    TRUNCATED = "TRUNCATED"
    TRAILING_BYTES = "TRAILING_BYTES"
    DECODE_ERROR = "DECODE_ERROR"
    REGISTRY_UNAVAILABLE = "REGISTRY_UNAVAILABLE"
    VALIDATION = "VALIDATION"
    DUPLICATE = "DUPLICATE"


class DecodeError(Exception):
    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(f"{kind.value}: {message}")
        self.kind = kind
        self.message = message


class RegistryUnavailable(DecodeError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.REGISTRY_UNAVAILABLE, message)


class SchemaRegistryError(Exception):
    """The registry answered but refused a request (e.g. 409 incompatible schema on register)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"schema registry answered {status}: {message}")
        self.status = status


# --------------------------------------------------------------------------------------------
# Encoding


_CAVRO_OPTIONS = cavro.DEFAULT_OPTIONS.replace(record_decodes_to_dict=True)
# Read after a body: it raises EOFError exactly when nothing is left, so any byte left over sends the
# record down fastavro's path, which names it TRAILING_BYTES.
_END = cavro.Schema('"boolean"')


def fast_schema(schema_json: Any) -> Any | None:
    """cavro's schema for ``schema_json`` without logical types (values are raw ints, as decoded
    records carry them), or None if cavro does not take the schema."""
    try:
        return cavro.Schema(strip_logical_types(schema_json), options=_CAVRO_OPTIONS)
    except Exception:
        return None


# Fingerprint -> (the schema JSON it was built from, cavro's schema or None). The fingerprint leaves
# out defaults, which cavro writes for missing fields, so an entry serves only the same schema object.
_FAST_WRITERS: dict[bytes, tuple[Any, Any | None]] = {}


def _body(record: Mapping[str, Any], parsed_schema: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parsed_schema, record)
    return buf.getvalue()


def _version_body(record: Mapping[str, Any], sv: SchemaVersion) -> bytes:
    entry = _FAST_WRITERS.get(sv.fingerprint)
    if entry is None or entry[0] is not sv.schema_json:
        entry = _FAST_WRITERS[sv.fingerprint] = (sv.schema_json, fast_schema(sv.schema_json))
    fast = entry[1]
    if fast is not None:
        try:
            return fast.binary_encode(record)  # type: ignore[no-any-return]
        except Exception:
            pass  # fastavro writes what it takes (e.g. a datetime) and words the error when it does not
    return _body(record, sv.parsed)


def encode_single_object(
    record: Mapping[str, Any], schema_name: str, *, catalogue: Catalogue | None = None
) -> bytes:
    """``C3 01`` + little-endian CRC-64-AVRO fingerprint + body, with the latest catalogue version."""
    sv = (catalogue or get_catalogue()).latest(schema_name)
    return SINGLE_OBJECT_MAGIC + sv.fingerprint + _version_body(record, sv)


def encode_single_object_with(record: Mapping[str, Any], sv: SchemaVersion, *, fast: bool = True) -> bytes:
    """Single-object encoding with an explicit (possibly older) schema version; ``fast=False``
    writes with fastavro only."""
    body = _version_body(record, sv) if fast else _body(record, sv.parsed)
    return SINGLE_OBJECT_MAGIC + sv.fingerprint + body


def encode_confluent(record: Mapping[str, Any], schema_id: int, parsed_schema: dict[str, Any]) -> bytes:
    """Confluent wire format: magic 0, 4-byte big-endian schema id, body."""
    return b"\x00" + schema_id.to_bytes(4, "big") + _body(record, parsed_schema)


# --------------------------------------------------------------------------------------------
# Schema registry


class SchemaRegistryClient:
    """The two calls creditflow needs from a Confluent-compatible schema registry.

    Blocking (stdlib urllib, no new dependency); async callers run it via ``asyncio.to_thread``.
    Results are cached forever: a registry id always names the same schema.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        self._headers = {
            "Accept": "application/vnd.schemaregistry.v1+json, application/json",
        }
        if parts.username is not None:
            # urllib does not turn URL userinfo into basic auth itself.
            cred = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
            netloc = parts.hostname or ""
            if parts.port:
                netloc += f":{parts.port}"
            parts = parts._replace(netloc=netloc)
        self.base_url = urllib.parse.urlunsplit(parts).rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._sleep = sleep
        self._by_id: dict[int, str] = {}
        self._ids: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = dict(self._headers)
        if data is not None:
            headers["Content-Type"] = "application/vnd.schemaregistry.v1+json"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.backoff * (2 ** (attempt - 1)))
            req = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                detail = _error_detail(exc)
                if exc.code >= 500 or exc.code == 429:
                    last = f"HTTP {exc.code}: {detail}"
                    continue
                raise SchemaRegistryError(exc.code, detail) from None
            except (OSError, ValueError) as exc:  # URLError, timeouts, resets, bad JSON
                last = f"{type(exc).__name__}: {exc}"
                continue
        raise RegistryUnavailable(
            f"{method} {self.base_url}{path} failed after {self.retries + 1} attempts: {last}"
        )

    def get_schema(self, schema_id: int) -> str:
        """Schema JSON text for a registry id. Raises DecodeError(UNKNOWN_SCHEMA) or RegistryUnavailable."""
        cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        try:
            doc = self._request("GET", f"/schemas/ids/{schema_id}")
        except SchemaRegistryError as exc:
            raise DecodeError(
                ErrorKind.UNKNOWN_SCHEMA, f"registry has no schema id {schema_id} ({exc})"
            ) from None
        if not isinstance(doc, dict) or not isinstance(doc.get("schema"), str):
            raise DecodeError(ErrorKind.UNKNOWN_SCHEMA, f"registry answer for id {schema_id} has no schema")
        if doc.get("schemaType", "AVRO") != "AVRO":
            raise DecodeError(
                ErrorKind.UNKNOWN_SCHEMA, f"schema id {schema_id} is {doc['schemaType']}, not AVRO"
            )
        with self._lock:
            self._by_id[schema_id] = doc["schema"]
        return doc["schema"]

    def register(self, subject: str, schema: Mapping[str, Any] | str) -> int:
        """Register (or look up) a schema under a subject; returns its global id."""
        text = schema if isinstance(schema, str) else json.dumps(schema, separators=(",", ":"))
        key = (subject, text)
        cached = self._ids.get(key)
        if cached is not None:
            return cached
        doc = self._request(
            "POST", f"/subjects/{urllib.parse.quote(subject, safe='')}/versions", {"schema": text}
        )
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), int):
            raise SchemaRegistryError(200, f"unexpected answer to register: {doc!r}")
        with self._lock:
            self._ids[key] = doc["id"]
            self._by_id.setdefault(doc["id"], text)
        return int(doc["id"])


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
        return str(body.get("message", body)) if isinstance(body, dict) else str(body)
    except Exception:
        return exc.reason if isinstance(exc.reason, str) else str(exc.reason)


# --------------------------------------------------------------------------------------------
# Decoding


def strip_logical_types(schema: Any) -> Any:
    """Copy of a schema without ``logicalType`` annotations, so fastavro yields raw ints."""
    if isinstance(schema, dict):
        return {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical_types(s) for s in schema]
    return schema


class _Plan:
    """How to read bodies of one writer schema as the reader schema; built once, reused.

    ``reader`` is None when no resolution by fastavro is needed: either writer == reader, or the
    reader merely adds top-level fields with simple defaults (the usual evolution step). In the
    latter case the body is read with the writer schema alone and ``defaults``/``empty`` fill the
    new fields, which halves the cost of reading older versions.
    """

    __slots__ = ("defaults", "empty", "fast", "reader", "writer")

    def __init__(
        self,
        writer: dict[str, Any],
        reader: dict[str, Any] | None,
        defaults: dict[str, Any] | None = None,
        empty: tuple[tuple[str, type], ...] = (),
        fast: Any | None = None,
    ) -> None:
        self.writer = writer
        self.reader = reader
        self.defaults = defaults
        self.empty = empty  # fields defaulting to [] or {}: a fresh container per record
        # cavro's schema of the writer, when no resolution is needed (``reader`` None)
        self.fast = fast


_SCALAR_TYPES = frozenset({"null", "boolean", "int", "long", "string"})


def _type_key(t: Any) -> str:
    """Comparable form of a fully expanded field type (docs and logical types do not matter)."""

    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if k not in ("doc", "logicalType", "aliases")}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(t), sort_keys=True)


def _simple_default(field: dict[str, Any]) -> tuple[bool, Any]:
    """(usable, python value) of a field default that needs no decoding to become a value."""
    t = field["type"]
    first = t[0] if isinstance(t, list) else t
    kind = first.get("type") if isinstance(first, dict) else first
    default = field["default"]
    if kind in _SCALAR_TYPES or kind == "enum":
        return True, default
    if kind in ("float", "double") and isinstance(default, int | float):
        return True, float(default)
    if kind == "array" and default == []:
        return True, list
    if kind == "map" and default == {}:
        return True, dict
    return False, None


def _additive_plan(
    writer_json: dict[str, Any], reader_json: dict[str, Any], writer: dict[str, Any], fast: bool
) -> _Plan | None:
    """A resolution-free plan when the reader only adds defaulted fields to the writer, else None."""
    try:
        w, r = expand_schema(writer_json), expand_schema(reader_json)
    except Exception:
        return None
    if not (isinstance(w, dict) and isinstance(r, dict)) or w.get("name") != r.get("name"):
        return None
    r_fields = {f["name"]: f for f in r["fields"]}
    w_names = set()
    for f in w["fields"]:
        rf = r_fields.get(f["name"])
        if rf is None or _type_key(rf["type"]) != _type_key(f["type"]):
            return None
        w_names.add(f["name"])
    defaults: dict[str, Any] = {}
    empty: list[tuple[str, type]] = []
    for name, rf in r_fields.items():
        if name in w_names:
            continue
        if "default" not in rf:
            return None
        usable, value = _simple_default(rf)
        if not usable:
            return None
        if value is list or value is dict:
            empty.append((name, value))
        else:
            defaults[name] = value
    return _Plan(writer, None, defaults, tuple(empty), fast_schema(writer_json) if fast else None)


class Decoder:
    """Decodes either wire format into a dict shaped by ``reader_schema_name``'s latest version."""

    def __init__(
        self,
        reader_schema_name: str,
        registry: SchemaRegistryClient | None = None,
        *,
        catalogue: Catalogue | None = None,
        fast: bool = True,
    ) -> None:
        """``fast=False`` reads every body with fastavro (the benchmark's hand-written peer is
        defined as a fastavro loop)."""
        self._fast = fast
        self._catalogue = catalogue or get_catalogue()
        self.reader_version = self._catalogue.latest(reader_schema_name)
        self._reader_json = strip_logical_types(self.reader_version.schema_json)
        self._reader = cast(dict[str, Any], parse_schema(self._reader_json, named_schemas={}))
        self._registry = registry
        # Keyed by wire fingerprint / registry id; a cached DecodeError means "this writer can never
        # be read", so a flood of such records does not re-run the resolution check each time.
        self._by_fp: dict[bytes, _Plan | DecodeError] = {}
        self._by_id: dict[int, _Plan | DecodeError] = {}
        self._by_canonical_fp: dict[bytes, _Plan | DecodeError] = {}

    @property
    def reader_schema(self) -> dict[str, Any]:
        return self._reader

    def _plan_for(self, writer_json: dict[str, Any], fp: bytes) -> _Plan | DecodeError:
        shared = self._by_canonical_fp.get(fp)
        if shared is not None:
            return shared
        plan: _Plan | DecodeError
        if fp == self.reader_version.fingerprint:
            plan = _Plan(self._reader, None, fast=fast_schema(self._reader_json) if self._fast else None)
        else:
            reasons = check_compatible(self.reader_version.schema_json, writer_json)
            if reasons:
                name = writer_json.get("name", "?") if isinstance(writer_json, dict) else "?"
                plan = DecodeError(
                    ErrorKind.DECODE_ERROR,
                    f"writer schema {name} cannot be read as {self.reader_version.fullname} "
                    f"v{self.reader_version.version}: {'; '.join(reasons)}",
                )
            else:
                try:
                    writer = cast(
                        dict[str, Any], parse_schema(strip_logical_types(writer_json), named_schemas={})
                    )
                except Exception as exc:
                    plan = DecodeError(ErrorKind.UNKNOWN_SCHEMA, f"writer schema does not parse: {exc}")
                else:
                    plan = _additive_plan(writer_json, self._reader_json, writer, self._fast) or _Plan(
                        writer, self._reader
                    )
        self._by_canonical_fp[fp] = plan
        return plan

    def _single_object_plan(self, fp: bytes) -> _Plan:
        plan = self._by_fp.get(fp)
        if plan is None:
            sv = self._catalogue.by_fingerprint(fp)
            if sv is None:
                plan = DecodeError(
                    ErrorKind.UNKNOWN_SCHEMA, f"no catalogue schema has fingerprint {fp.hex()}"
                )
            else:
                plan = self._plan_for(sv.schema_json, sv.fingerprint)
            self._by_fp[fp] = plan
        if isinstance(plan, DecodeError):
            raise plan
        return plan

    def _confluent_plan(self, schema_id: int) -> _Plan:
        plan = self._by_id.get(schema_id)
        if plan is None:
            if self._registry is None:
                raise DecodeError(
                    ErrorKind.UNKNOWN_SCHEMA,
                    f"Confluent-framed record (schema id {schema_id}) but no schema registry is configured",
                )
            # RegistryUnavailable is deliberately not cached: the registry may come back.
            text = self._registry.get_schema(schema_id)
            try:
                writer_json = json.loads(text)
                fp = rabin_fingerprint(writer_json)
            except Exception as exc:
                plan = DecodeError(
                    ErrorKind.UNKNOWN_SCHEMA, f"registry schema id {schema_id} does not parse: {exc}"
                )
            else:
                plan = self._plan_for(writer_json, fp)
            self._by_id[schema_id] = plan
        if isinstance(plan, DecodeError):
            raise plan
        return plan

    def decode(self, data: bytes) -> dict[str, Any]:
        if not data:
            raise DecodeError(ErrorKind.TRUNCATED, "empty value")
        if data[0] == 0xC3:
            if len(data) < SINGLE_OBJECT_HEADER_LEN:
                if len(data) == 1 or data[1] == 0x01:
                    raise DecodeError(
                        ErrorKind.TRUNCATED, f"{len(data)} bytes is shorter than the single-object header"
                    )
                raise DecodeError(ErrorKind.BAD_MAGIC, f"unknown magic bytes {data[:2].hex()}")
            if data[1] != 0x01:
                raise DecodeError(ErrorKind.BAD_MAGIC, f"unknown magic bytes {data[:2].hex()}")
            plan = self._single_object_plan(bytes(data[2:SINGLE_OBJECT_HEADER_LEN]))
            start = SINGLE_OBJECT_HEADER_LEN
        elif data[0] == CONFLUENT_MAGIC:
            if len(data) < CONFLUENT_HEADER_LEN:
                raise DecodeError(
                    ErrorKind.TRUNCATED, f"{len(data)} bytes is shorter than the Confluent header"
                )
            plan = self._confluent_plan(int.from_bytes(data[1:CONFLUENT_HEADER_LEN], "big"))
            start = CONFLUENT_HEADER_LEN
        else:
            raise DecodeError(ErrorKind.BAD_MAGIC, f"unknown magic byte {data[:1].hex()}")
        return _read_body(data, start, plan)


def _read_body(data: bytes, start: int, plan: _Plan) -> dict[str, Any]:
    fast = plan.fast
    if fast is not None:
        reader = cavro.MemoryReader(memoryview(data)[start:])
        record: Any = None
        try:
            record = fast.binary_read(reader)
            _END.binary_read(reader)
        except EOFError:
            # Raised by the body's read (record still None: cut short, fastavro below tells how) or
            # by _END's (the body was whole and last). _END reading a byte falls through too.
            if isinstance(record, dict):
                return _with_defaults(record, plan)
        except Exception:
            pass  # not a valid body: fastavro below words the error
    return _read_body_fastavro(data, start, plan)


def _read_body_fastavro(data: bytes, start: int, plan: _Plan) -> dict[str, Any]:
    buf = io.BytesIO(data)
    buf.seek(start)
    size = len(data)
    try:
        record = schemaless_reader(buf, plan.writer, plan.reader)
    except Exception as exc:
        # fastavro reports a body that ends early as EOFError or, inside a varint, IndexError; it
        # reports corruption as ValueError, UnicodeDecodeError, OverflowError, MemoryError,
        # SchemaResolutionError... Running out of input is what makes a failure a truncation.
        text = f"{type(exc).__name__}: {exc}"
        negative_length = isinstance(exc, EOFError) and str(exc).startswith("Expected -")
        if buf.tell() >= size and not negative_length:
            raise DecodeError(ErrorKind.TRUNCATED, f"body ends early ({text})") from None
        raise DecodeError(ErrorKind.DECODE_ERROR, text) from None
    pos = buf.tell()
    if pos != size:
        raise DecodeError(ErrorKind.TRAILING_BYTES, f"{size - pos} bytes after the end of the record")
    if not isinstance(record, dict):
        raise DecodeError(ErrorKind.DECODE_ERROR, "body is not a record")
    return _with_defaults(record, plan)


def _with_defaults(record: dict[str, Any], plan: _Plan) -> dict[str, Any]:
    if plan.defaults is not None:
        record.update(plan.defaults)
        for name, factory in plan.empty:
            record[name] = factory()
    return record
