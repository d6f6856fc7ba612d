"""Terminal tables at 80 columns: nothing cut, exact when it fits, abbreviated or pivoted when not."""

from __future__ import annotations

from decimal import Decimal

import pytest
from rich.console import Console

from streams.cli.query import SHORT_HEADERS, to_text
from streams.cli.terminal_tables import Fitted, column_widths, compact_number


@pytest.mark.parametrize(("value", "text"), [
    (0, "0"), (9_999, "9,999"), (12_345, "12.3k"), (1_234_567, "1.23M"), (Decimal("661.045251"), "661.05"),
    (Decimal("0.047854"), "0.0479"), (Decimal("1171.000000"), "1.17k"), (Decimal("0"), "0"),
    (-Decimal("2500000"), "-2.50M"), (3.14159, "3.14"), (7 * 10**12, "7.00T"), (Decimal("123456.7"), "123k"),
])
def test_compact_numbers(value: object, text: str) -> None:
    assert compact_number(value) == text


def _print(columns: list[str], rows: list[tuple[object, ...]], width: int = 80) -> str:
    console = Console(width=width, record=True, force_terminal=False)
    console.print(Fitted(columns, rows, to_text, title="t"))
    return console.export_text()


CREDITS_COLUMNS = ["category", "plan", "model", "requests", "list_credits", "charged_credits", "subsidy_credits",
                   "grant_funded_credits"]
CREDITS_ROWS = [("COMPLEX_REASONING", "ENTERPRISE", "atlas-medium", 12_345, Decimal("661.045251"),
                 Decimal("188.870070"), Decimal("472.175181"), Decimal("186.132703")),
                ("TOOL_USE", "FREE", "atlas-small", 8, Decimal("0.071499"), Decimal("0.047666"),
                 Decimal("0.023833"), Decimal("0.017900"))]


def test_a_wide_report_fits_80_columns_without_cutting_anything() -> None:
    out = _print([SHORT_HEADERS.get(c, c) for c in CREDITS_COLUMNS], CREDITS_ROWS)
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out
    for word in ("category", "requests", "charged", "subsidy", "grants", "REASONING", "ENTERPRISE", "atlas-medium",
                 "12.3k", "661.05", "0.0715"):
        assert word in out, out
    assert "abbreviated" in out


def test_a_table_that_fits_keeps_exact_values() -> None:
    out = _print(["campaign", "used_credits"], [("dev-week", Decimal("40.389241"))])
    assert "40.389241" in out and "abbreviated" not in out


def test_too_many_columns_pivot_to_one_block_per_row_with_exact_values() -> None:
    columns = [f"column_number_{i}" for i in range(12)]
    rows = [tuple(Decimal(f"{i}.123456") for i in range(12))]
    out = _print(columns, rows)
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "-- row 1 --" in out and "column_number_11: 11.123456" in out


def test_widths_narrow_the_widest_column_first_and_never_below_a_word() -> None:
    widths = column_widths(["name", "n"], [["alpha beta gamma", "12345"]], [True, False], 16)
    assert widths == [9, 5]
    assert column_widths(["name", "n"], [["alpha beta gamma", "12345"]], [True, False], 10) is None


def test_a_narrow_table_keeps_its_title_and_row_count_on_one_line_each() -> None:
    console = Console(width=80, record=True, force_terminal=False)
    console.print(Fitted(["1"], [(1,)], to_text))
    console.print(Fitted(["priority", "samples"], [("LOW", 134)], to_text,
                         title="data-collection priority and refinement samples"))
    lines = [line.strip() for line in console.export_text().splitlines()]
    assert "1 row" in lines, lines
    assert "data-collection priority and refinement samples" in lines, lines
    assert not any(len(line) == 1 and line.isalpha() for line in lines), lines
