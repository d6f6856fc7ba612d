"""The live SQL bridge's pure parts: who may query, which URL parameters are settings, formats,
and ClickHouse-shaped errors."""

from __future__ import annotations

import pytest

from sinks.sql_bridge import Access, BridgeError, engine_error, is_loopback, pick_format, split_params
from sinks.sql_guard import admit


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True),
                                                ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                                ("::", False), ("10.0.0.5", False), ("example.org", False)])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_without_a_password_only_loopback_is_served() -> None:
    Access("default", None, loopback=True).check(None, None)
    with pytest.raises(BridgeError, match="CREDITFLOW_SQL_PASSWORD") as refused:
        Access("default", None, loopback=False).check("default", "")
    assert (refused.value.status, refused.value.code) == (401, 516)


def test_a_configured_password_is_required_everywhere() -> None:
    access = Access("analyst", "s3cret", loopback=True)
    access.check("analyst", "s3cret")
    for user, password in ((None, None), ("analyst", "wrong"), ("default", "s3cret"), ("analyst", "")):
        with pytest.raises(BridgeError):
            access.check(user, password)


def test_url_parameters_split_into_bound_values_and_settings() -> None:
    bound, settings = split_params({"query": "SELECT 1", "param_day": "2026-12-01", "database": "default",
                                    "query_id": "q", "client_protocol_version": "54405", "readonly": "0"})
    assert bound == {"day": "2026-12-01"}
    assert settings == {"readonly": "0"}


def test_formats_come_from_the_statement_then_default_format() -> None:
    assert pick_format(admit("SELECT 1 FORMAT jsoneachrow"), "Native") == "JSONEachRow"
    assert pick_format(admit("SELECT 1"), "RowBinaryWithNamesAndTypes") == "RowBinaryWithNamesAndTypes"
    assert pick_format(admit("SELECT 1"), None) == "TabSeparated"
    with pytest.raises(BridgeError, match="Unknown or unserved format"):
        pick_format(admit("SELECT 1 FORMAT Template"), None)


def test_engine_errors_keep_clickhouse_code_and_name() -> None:
    err = engine_error(RuntimeError("Code: 60. DB::Exception: Unknown table expression identifier 'x'. "
                                    "(UNKNOWN_TABLE)"))
    assert (err.status, err.code, err.name) == (404, 60, "UNKNOWN_TABLE")
    assert err.body() == "Code: 60. DB::Exception: Unknown table expression identifier 'x'. (UNKNOWN_TABLE)\n"
    assert engine_error(RuntimeError("Code: 159. DB::Exception: Timeout exceeded. (TIMEOUT_EXCEEDED)")).status == 504
