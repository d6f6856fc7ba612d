"""The local Avro schema catalogue: every ``schemas/avro/<Record>.v<N>.avsc``, parsed once.

Single-object encoded messages name their writer schema by the CRC-64-AVRO (Rabin) fingerprint of
its Parsing Canonical Form, so the catalogue indexes every version by that fingerprint. Evolution
rules (backward compatibility: the new version, as reader, must read data written with the
previous one) are checked with the reference ``avro`` implementation rather than fastavro, so the
check does not share bugs with the codec it protects.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, cast

import avro.errors
import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

_FILE_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\.v(?P<version>[1-9][0-9]*)\.avsc$")
FINGERPRINT_ALGORITHM = "CRC-64-AVRO"


class CatalogueError(Exception):
    """The schema files on disk are inconsistent (bad name, duplicate version, unparsable)."""


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one record schema."""

    name: str  # short record name, e.g. "InteractionEvent"
    fullname: str  # e.g. "io.creditflow.InteractionEvent"
    version: int
    schema_json: dict[str, Any] = field(repr=False)  # as written in the file
    parsed: dict[str, Any] = field(repr=False)  # fastavro-parsed, logical types kept (for writing)
    canonical: str = field(repr=False)
    fingerprint: bytes = field(repr=False)  # 8 bytes, little-endian: as it appears on the wire

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()


def rabin_fingerprint(schema_json: Mapping[str, Any] | str) -> bytes:
    """CRC-64-AVRO fingerprint of a schema's canonical form, little-endian (single-object order)."""
    canonical = to_parsing_canonical_form(
        json.loads(schema_json) if isinstance(schema_json, str) else dict(schema_json)
    )
    # fastavro's hex is already the little-endian byte string of the 64-bit value (the order
    # single-object encoding puts on the wire): "null" -> 8a8f25cce724dd63 for 0x63DD24E7CC258F8A.
    return bytes.fromhex(fingerprint(canonical, FINGERPRINT_ALGORITHM))


class Catalogue:
    def __init__(self, versions: list[SchemaVersion]) -> None:
        self._by_name: dict[str, list[SchemaVersion]] = {}
        self._by_fp: dict[bytes, SchemaVersion] = {}
        # Asked once per encoded record on the hot path, by the name the caller used.
        self._latest: dict[str, SchemaVersion] = {}
        for sv in sorted(versions, key=lambda s: (s.name, s.version)):
            self._by_name.setdefault(sv.name, []).append(sv)
            clash = self._by_fp.get(sv.fingerprint)
            if clash is not None:
                raise CatalogueError(
                    f"{sv.name} v{sv.version} has the same canonical form as {clash.name} v{clash.version}"
                )
            self._by_fp[sv.fingerprint] = sv
        for name, svs in self._by_name.items():
            expected = list(range(1, len(svs) + 1))
            if [s.version for s in svs] != expected:
                raise CatalogueError(
                    f"{name}: versions must be 1..N without gaps, got {[s.version for s in svs]}"
                )

    @classmethod
    def load(cls, directory: Path | None = None) -> Catalogue:
        root: Any = directory if directory is not None else resources.files("schemas") / "avro"
        versions = []
        for entry in sorted(root.iterdir(), key=lambda p: p.name):
            if not entry.name.endswith(".avsc"):
                continue
            m = _FILE_RE.match(entry.name)
            if m is None:
                raise CatalogueError(f"{entry.name}: schema files must be named <Record>.v<N>.avsc")
            try:
                schema_json = json.loads(entry.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise CatalogueError(f"{entry.name}: not readable JSON: {exc}") from exc
            versions.append(build_version(schema_json, int(m["version"]), source=entry.name))
            if versions[-1].name != m["name"]:
                raise CatalogueError(
                    f"{entry.name}: file name says {m['name']}, schema says {versions[-1].name}"
                )
        return cls(versions)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def versions(self, name: str) -> list[SchemaVersion]:
        try:
            return list(self._by_name[_short(name)])
        except KeyError:
            raise KeyError(f"no schema named {name!r} in the catalogue") from None

    def latest(self, name: str) -> SchemaVersion:
        sv = self._latest.get(name)
        if sv is None:
            sv = self._latest[name] = self.versions(name)[-1]
        return sv

    def by_fingerprint(self, fp: bytes) -> SchemaVersion | None:
        return self._by_fp.get(bytes(fp))

    def check(self) -> dict[str, list[str]]:
        """Every version against the one before it; name -> reasons (empty = compatible)."""
        out: dict[str, list[str]] = {}
        for name, svs in self._by_name.items():
            reasons: list[str] = []
            for old, new in itertools.pairwise(svs):
                reasons += [
                    f"v{new.version} vs v{old.version}: {r}"
                    for r in check_compatible(new.schema_json, old.schema_json)
                ]
            out[name] = reasons
        return out


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def build_version(schema_json: dict[str, Any], version: int, *, source: str = "<schema>") -> SchemaVersion:
    if not isinstance(schema_json, dict) or schema_json.get("type") != "record":
        raise CatalogueError(f"{source}: top level must be one record schema")
    try:
        # A fresh named-types scope per file: each file is self-contained, and two records may
        # each define their own copy of a shared enum such as Plan.
        parsed = cast(dict[str, Any], parse_schema(schema_json, named_schemas={}))
        canonical = to_parsing_canonical_form(schema_json)
    except Exception as exc:  # fastavro raises several unrelated types for a bad schema
        raise CatalogueError(f"{source}: not a valid Avro schema: {exc}") from exc
    fullname = parsed["name"]
    return SchemaVersion(
        name=_short(fullname),
        fullname=fullname,
        version=version,
        schema_json=schema_json,
        parsed=parsed,
        canonical=canonical,
        fingerprint=rabin_fingerprint(schema_json),
    )


def check_compatible(
    new_schema_json: Mapping[str, Any] | str, old_schema_json: Mapping[str, Any] | str
) -> list[str]:
    """Reasons why ``new`` (as reader) cannot read data written with ``old``; empty = compatible."""
    try:
        new = _avro_parse(new_schema_json)
    except (avro.errors.AvroException, ValueError, TypeError) as exc:
        return [f"new schema is not valid Avro: {exc}"]
    try:
        old = _avro_parse(old_schema_json)
    except (avro.errors.AvroException, ValueError, TypeError) as exc:
        return [f"old schema is not valid Avro: {exc}"]
    result = ReaderWriterCompatibilityChecker().get_compatibility(new, old)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    locations = sorted(result.locations)
    where = f" (at {', '.join(locations)})" if locations and locations != ["/"] else ""
    return [f"{msg}{where}" for msg in sorted(result.messages)] or [f"incompatible{where}"]


def _avro_parse(schema: Mapping[str, Any] | str) -> avro.schema.Schema:
    text = schema if isinstance(schema, str) else json.dumps(schema)
    return avro.schema.parse(text)


@lru_cache(maxsize=1)
def get_catalogue() -> Catalogue:
    return Catalogue.load()


def latest(name: str) -> SchemaVersion:
    return get_catalogue().latest(name)


def versions(name: str) -> list[SchemaVersion]:
    return get_catalogue().versions(name)


def by_fingerprint(fp: bytes) -> SchemaVersion | None:
    return get_catalogue().by_fingerprint(fp)


def check_catalogue() -> dict[str, list[str]]:
    return get_catalogue().check()
