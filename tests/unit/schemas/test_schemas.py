"""The schema catalogue: every contract is well-formed, documented, content-free and evolvable."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import avro.schema
import pytest
from click.testing import CliRunner
from fastavro import parse_schema

from schemas.catalogue import (
    Catalogue,
    CatalogueError,
    check_catalogue,
    check_compatible,
    get_catalogue,
    latest,
)
from streams.cli.schemas import schemas as schemas_cli
from streams.wire.codec import ErrorKind

AVRO_DIR = Path(__file__).resolve().parents[3] / "schemas" / "avro"
SCHEMA_FILES = sorted(AVRO_DIR.glob("*.avsc"))
EXPECTED_RECORDS = {
    "InteractionEvent",
    "UsageEnriched",
    "CreditGrant",
    "SubscriptionChange",
    "GamingAlert",
    "ReviewDecision",
    "RefinementSample",
    "DeadLetter",
    "CreditBalance",
    "CreditNotification",
}


def _fields(schema: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every field of every record reachable from ``schema``, with its dotted path."""
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(schema, list):
        for branch in schema:
            out += _fields(branch, path)
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            for f in schema["fields"]:
                out.append((f"{path}{f['name']}", f))
                out += _fields(f["type"], f"{path}{f['name']}.")
        elif schema.get("type") == "array":
            out += _fields(schema["items"], path)
        elif schema.get("type") == "map":
            out += _fields(schema["values"], path)
    return out


def _enum_symbols(schema: Any, found: dict[str, list[str]]) -> None:
    if isinstance(schema, list):
        for s in schema:
            _enum_symbols(s, found)
    elif isinstance(schema, dict):
        if schema.get("type") == "enum":
            found.setdefault(schema["name"], schema["symbols"])
            assert found[schema["name"]] == schema["symbols"], f"enum {schema['name']} differs across schemas"
        for key in ("fields", "items", "values", "type"):
            if key in schema:
                _enum_symbols(schema[key], found)


def test_catalogue_holds_every_contract() -> None:
    assert set(get_catalogue().names()) == EXPECTED_RECORDS
    assert [sv.version for sv in get_catalogue().versions("InteractionEvent")] == [1, 2]
    assert [sv.version for sv in get_catalogue().versions("RefinementSample")] == [1, 2, 3]
    assert [sv.version for sv in get_catalogue().versions("GamingAlert")] == [1, 2]


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_schema_parses_with_both_implementations(path: Path) -> None:
    schema = json.loads(path.read_text())
    parse_schema(schema, named_schemas={})
    parsed = avro.schema.parse(path.read_text())
    assert isinstance(parsed, avro.schema.RecordSchema)
    assert parsed.namespace == "io.creditflow"
    assert path.name.startswith(f"{parsed.name}.v")
    assert schema.get("doc"), "the record itself needs a doc"


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_every_field_has_a_doc(path: Path) -> None:
    undocumented = [name for name, f in _fields(json.loads(path.read_text())) if not f.get("doc", "").strip()]
    assert undocumented == []


# Tokens that would suggest raw content or raw personal data; hashed/fingerprinted forms are fine.
_RAW_TOKENS = {
    "prompt",
    "text",
    "content",
    "body",
    "completion",
    "email",
    "phone",
    "ip",
    "address",
    "password",
    "card",
    "ssn",
    "name_raw",
    "useragent",
    "user_agent",
}
_SAFE_SUFFIXES = ("_hash", "_fingerprint", "_id", "_ids")


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_no_field_suggests_raw_content(path: Path) -> None:
    offending = []
    for name, _ in _fields(json.loads(path.read_text())):
        leaf = name.rsplit(".", 1)[-1].lower()
        if leaf.endswith(_SAFE_SUFFIXES):
            continue
        if set(leaf.split("_")) & _RAW_TOKENS or leaf in _RAW_TOKENS:
            offending.append(name)
    assert offending == []


def test_raw_content_check_catches_what_it_should() -> None:
    schema = {
        "type": "record",
        "name": "Bad",
        "fields": [
            {"name": "prompt_text", "type": "string", "doc": "x"},
            {"name": "client_ip", "type": "string", "doc": "x"},
            {"name": "ip_hash", "type": "string", "doc": "x"},
        ],
    }
    names = [n for n, _ in _fields(schema)]
    flagged = [n for n in names if not n.endswith(_SAFE_SUFFIXES) and set(n.split("_")) & _RAW_TOKENS]
    assert flagged == ["prompt_text", "client_ip"]


def _latest_files() -> list[Path]:
    latest: dict[str, Path] = {}
    for path in SCHEMA_FILES:  # sorted: v1 before v2 (no record has ten versions)
        latest[path.name.split(".v")[0]] = path
    return sorted(latest.values())


def test_shared_enums_have_identical_symbols_everywhere() -> None:
    found: dict[str, list[str]] = {}
    for path in _latest_files():
        _enum_symbols(json.loads(path.read_text()), found)
    assert found["Plan"] == ["FREE", "PRO", "MAX", "TEAM", "ENTERPRISE"]
    assert found["Priority"] == ["VERY_HIGH", "HIGH", "MEDIUM", "LOW"]
    assert found["FeatureCategory"] == ["EXTENDED_CONTEXT", "COMPLEX_REASONING", "TOOL_USE", "STANDARD_CHAT"]
    assert found["DeadLetterErrorKind"] == [k.value for k in ErrorKind]


def test_enums_only_grow_at_the_end_across_versions() -> None:
    """A new version may append symbols (old data still reads); it never renames or reorders."""
    latest: dict[str, list[str]] = {}
    for path in _latest_files():
        _enum_symbols(json.loads(path.read_text()), latest)
    for path in SCHEMA_FILES:
        older: dict[str, list[str]] = {}
        _enum_symbols(json.loads(path.read_text()), older)
        for name, symbols in older.items():
            assert latest[name][: len(symbols)] == symbols, f"{path.name}: enum {name}"


def test_money_fields_are_integer_micro_credits() -> None:
    for path in SCHEMA_FILES:
        for name, f in _fields(json.loads(path.read_text())):
            if name.endswith("_micro"):
                assert f["type"] == "long", f"{path.name}:{name}"


def test_catalogue_evolution_is_backward_compatible() -> None:
    assert check_catalogue() == {name: [] for name in EXPECTED_RECORDS}


def _v2() -> dict[str, Any]:
    return json.loads(json.dumps(latest("InteractionEvent").schema_json))


def test_new_required_field_without_default_is_rejected() -> None:
    cand = _v2()
    cand["fields"].append({"name": "region", "type": "string", "doc": "Serving region."})
    reasons = check_compatible(cand, latest("InteractionEvent").schema_json)
    assert reasons and any("region" in r for r in reasons)


def test_type_change_is_rejected() -> None:
    cand = _v2()
    for f in cand["fields"]:
        if f["name"] == "input_tokens":
            f["type"] = "string"
    reasons = check_compatible(cand, latest("InteractionEvent").schema_json)
    assert reasons and any("input_tokens" in r or "string" in r.lower() for r in reasons)


def test_removed_enum_symbol_without_default_is_rejected() -> None:
    old = latest("CreditGrant").schema_json
    cand = json.loads(json.dumps(old))
    cand["fields"][0]["type"]["symbols"] = ["ISSUED"]
    reasons = check_compatible(cand, old)
    assert reasons and any("REVOKED" in r for r in reasons)


def test_optional_field_with_default_is_compatible() -> None:
    cand = _v2()
    cand["fields"].append({"name": "region", "type": ["null", "string"], "default": None, "doc": "Region."})
    assert check_compatible(cand, latest("InteractionEvent").schema_json) == []


def test_catalogue_rejects_a_gap_in_versions(tmp_path: Path) -> None:
    (tmp_path / "CreditGrant.v2.avsc").write_text(json.dumps(latest("CreditGrant").schema_json))
    with pytest.raises(CatalogueError, match="versions"):
        Catalogue.load(tmp_path)


def test_catalogue_rejects_a_misnamed_file(tmp_path: Path) -> None:
    (tmp_path / "Grant.v1.avsc").write_text(json.dumps(latest("CreditGrant").schema_json))
    with pytest.raises(CatalogueError, match="file name"):
        Catalogue.load(tmp_path)


# -- the CLI -------------------------------------------------------------------------------------


def test_cli_check_accepts_a_compatible_candidate(tmp_path: Path) -> None:
    cand = _v2()
    cand["fields"].append({"name": "region", "type": ["null", "string"], "default": None, "doc": "Region."})
    f = tmp_path / "InteractionEvent.v3.avsc"
    f.write_text(json.dumps(cand))
    result = CliRunner().invoke(schemas_cli, ["check", str(f)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("OK") and "InteractionEvent v2" in result.output


def test_cli_check_rejects_an_incompatible_candidate(tmp_path: Path) -> None:
    cand = _v2()
    cand["fields"].append({"name": "region", "type": "string", "doc": "Region."})
    f = tmp_path / "c.avsc"
    f.write_text(json.dumps(cand))
    result = CliRunner().invoke(schemas_cli, ["check", str(f)])
    assert result.exit_code == 1
    assert "INCOMPATIBLE" in result.output and "region" in result.output


@pytest.mark.parametrize(
    "content", [None, "{not json", '{"type": "record", "name": "X", "fields": [{"name": 1}]}']
)
def test_cli_check_reports_unreadable_files_in_one_line(tmp_path: Path, content: str | None) -> None:
    f = tmp_path / "c.avsc"
    if content is not None:
        f.write_text(content)
    result = CliRunner().invoke(schemas_cli, ["check", str(f)])
    assert result.exit_code == 1
    assert re.fullmatch(r"error: [^\n]+\n", result.output), result.output
    assert "Traceback" not in result.output


def test_cli_list_shows_every_record_and_fingerprint() -> None:
    result = CliRunner().invoke(schemas_cli, ["list"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name in EXPECTED_RECORDS:
        assert name in result.output
    assert latest("InteractionEvent").fingerprint_hex in result.output


def test_v1_events_are_read_by_the_v2_reader_with_defaults() -> None:
    from schemas.catalogue import versions
    from streams.wire.codec import Decoder, encode_single_object_with

    v1 = versions("InteractionEvent")[0]
    old = {
        "event_id": "e1",
        "occurred_at": 1_700_000_000_000,
        "account_id": "a1",
        "team_id": None,
        "plan": "MAX",
        "credit_grant_id": "g1",
        "model": "m",
        "surface": "IDE",
        "session_id": "s1",
        "turn_index": 0,
        "input_tokens": 10,
        "output_tokens": 5,
        "context_window_tokens": 200_000,
        "reasoning_steps": 0,
        "thinking_tokens": 0,
        "tool_calls": 1,
        "tool_names": ["grep"],
        "latency_ms": 40,
        "outcome": "TIMEOUT",
        "error_code": "deadline",
        "ip_hash": None,
        "device_hash": "d",
        "prompt_fingerprint": None,
    }
    decoded = Decoder("InteractionEvent").decode(encode_single_object_with(old, v1))
    v2_names = [f["name"] for f in latest("InteractionEvent").schema_json["fields"]]
    assert sorted(decoded) == sorted(v2_names)
    assert decoded == {
        **old,
        "org_id": None,
        "cached_tokens": 0,
        "payment_hash": None,
        "context_uniqueness": None,
        "attributes": {},
    }


V1_ALERT: dict[str, Any] = {
    "alert_id": "al-1", "dedup_key": "CF-003|r1|account|a1|20000", "rule_id": "CF-003",
    "rule_name": "Fast grant depletion", "rule_revision": 1, "entity_type": "account", "entity_id": "a1",
    "related_entities": [], "plan": "FREE", "grant_id": "g1", "window_start": 1_700_000_000_000,
    "window_end": 1_700_003_600_000, "severity": "HIGH", "score": 0.8, "observed": "16.3", "limit": "24",
    "counter_signals": [], "evidence": {"counts": {"events": 3}, "credits_by_category": {},
                                        "sample_event_ids": ["e1"]},
    "estimated_credits_exposed_micro": 1_000_000, "suggested_action": "Hold the grant.",
    "first_seen_at": 1_700_003_600_000, "last_seen_at": 1_700_003_600_000, "firings": 1, "status": "OPEN",
}


def test_v1_alerts_are_read_by_the_v2_reader_with_empty_labels() -> None:
    from schemas.catalogue import versions
    from streams.wire.codec import Decoder, encode_single_object_with

    v1, v2 = versions("GamingAlert")[:2]
    assert [f["name"] for f in v2.schema_json["fields"]][-2:] == ["observed_label", "limit_label"]
    decoded = Decoder("GamingAlert").decode(encode_single_object_with(V1_ALERT, v1))
    assert decoded == {**V1_ALERT, "observed_label": "", "limit_label": ""}
