"""Gaming alerts as the sink stores them: a v2 alert's labels and a v1 alert's empty ones both fill
every column of ``gaming_alerts``."""

from __future__ import annotations

from typing import Any

from schemas.catalogue import versions
from sinks.columns import GAMING_ALERTS_COLUMNS
from sinks.routing import ROUTES
from streams.runtime.topics import GAMING_ALERTS
from streams.wire.codec import Decoder, encode_single_object, encode_single_object_with
from tests.unit.schemas.test_schemas import V1_ALERT

NULLABLE = {"plan", "grant_id"}


def _rows(payload: bytes) -> list[dict[str, Any]]:
    route = next(r for r in ROUTES if r.topic_key == GAMING_ALERTS)
    ((table, make),) = route.tables
    assert table == "gaming_alerts"
    return [dict(row) for row in make(Decoder(route.schema).decode(payload))]


def _complete(row: dict[str, Any]) -> None:
    missing = [c for c in GAMING_ALERTS_COLUMNS if row.get(c) is None and c not in NULLABLE]
    assert missing == []


def test_a_v1_alert_lands_with_empty_labels() -> None:
    (row,) = _rows(encode_single_object_with(V1_ALERT, versions("GamingAlert")[0]))
    _complete(row)
    assert (row["observed"], row["limit_value"]) == ("16.3", "24")
    assert (row["observed_label"], row["limit_label"]) == ("", "")


def test_a_v2_alert_lands_with_its_labels() -> None:
    alert = {**V1_ALERT, "observed_label": "84% of the grant spent in 16.3h", "limit_label": "80% within 24h"}
    (row,) = _rows(encode_single_object(alert, "GamingAlert"))
    _complete(row)
    assert [row[c] for c in GAMING_ALERTS_COLUMNS][-2:] == ["84% of the grant spent in 16.3h", "80% within 24h"]
    assert row["updated_at"] == alert["last_seen_at"] and row["sample_event_ids"] == ["e1"]
