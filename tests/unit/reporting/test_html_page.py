"""The HTML report's pure parts: rows to chart JSON, and a page that fetches nothing."""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal

from streams.reporting.html_page import CHARTS, ChartSpec, chart_data, page

LONG = ChartSpec("c", "t", "n", "line", "long", "SELECT 1")
WIDE = ChartSpec("w", "t", "n", "bars", "wide", "SELECT 1")


def test_long_rows_pivot_to_one_series_per_name_with_zeros_for_gaps() -> None:
    data = chart_data(LONG, ["day", "category", "v"], [("d1", "A", Decimal("1.5")), ("d1", "B", 2),
                                                         ("d2", "A", Decimal("0.000001"))])
    assert data["x"] == ["d1", "d2"]
    assert data["series"] == [{"name": "A", "values": [1.5, 1e-06], "exact": ["1.5", "0.000001"]},
                              {"name": "B", "values": [2.0, 0.0], "exact": ["2", "0"]}]


def test_wide_rows_make_a_series_per_column() -> None:
    data = chart_data(WIDE, ["rule_id", "alerts", "false_positive"], [("CF-001", 3, 1), ("CF-002", 0, None)])
    assert data["x"] == ["CF-001", "CF-002"]
    assert [s["name"] for s in data["series"]] == ["alerts", "false positive"]
    assert data["series"][1]["values"] == [1.0, 0.0] and data["series"][1]["exact"] == ["1", "-"]


def test_the_page_is_self_contained_and_its_data_cannot_close_the_script() -> None:
    charts = [chart_data(spec, ["x", "v"], [("</script><script>alert(1)</script>", 1)]) if spec.shape == "wide"
              else chart_data(spec, ["x", "s", "v"], [("d", "s", 1)]) for spec in CHARTS]
    text = page(charts, days=30, source="ClickHouse", generated_at=dt.datetime(2026, 12, 2, tzinfo=dt.UTC))
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert text.count("</script") == 2 and "</script><script>alert" not in text
    payload = re.search(r'<script type="application/json" id="chart-data">(.*?)</script>', text, flags=re.S)
    assert payload and [c["id"] for c in json.loads(payload.group(1))] == [s.id for s in CHARTS]
    assert CHARTS[0].id == "scorecard"
