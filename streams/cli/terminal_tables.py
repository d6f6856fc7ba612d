"""Tables that fit the terminal: what ``creditflow query`` and ``creditflow report`` print.

A table is drawn with light rules (no vertical ones) and laid out in the first of three shapes
that fits the width, each giving up a little:
1. exact values, headers wrapped at their underscores (``list_credits`` over two lines);
2. numbers abbreviated (``12.3k``, ``4.56M``, credits to two decimals) and names wrapped at their
   underscores too, said so in the caption;
3. pivoted: one block per row, ``name: value`` per line, exact values again.
Nothing is cut to an ellipsis. CSV and JSON output are never touched: they stay exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text


def header_label(name: str) -> str:
    """A header that can wrap: underscores become spaces."""
    return name.replace("_", " ")


def is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def compact_number(value: Any) -> str:
    """A short reading of a number: thousands as k, millions as M (G, T), three significant
    digits; smaller fractions to two decimals, or three significant digits below one."""
    if not is_number(value):
        raise TypeError(f"not a number: {value!r}")
    d = Decimal(str(value))
    if isinstance(value, int) and abs(d) < 10_000:
        return f"{value:,}"
    for bound, suffix in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "k")):
        if abs(d) >= bound:
            scaled = d / bound
            places = 0 if abs(scaled) >= 100 else 1 if abs(scaled) >= 10 else 2
            return f"{scaled:.{places}f}{suffix}"
    if d == 0:
        return "0"
    if abs(d) < 1:
        return f"{float(d):.3g}"
    return f"{d:.2f}"


# Between two columns: one space of (collapsed) padding and the blank divider; no outer edge.
_GUTTER = 2


def _longest_word(text: str) -> int:
    return max((len(w) for w in text.split()), default=0)


def column_widths(headers: Sequence[str], cells: Sequence[Sequence[str]], wrappable: Sequence[bool],
                  width: int) -> list[int] | None:
    """Widths that fit ``width`` with no word cut: natural widths, then the widest column narrowed
    first, down to its longest word (the whole cell where cells must not wrap). None when even
    that does not fit."""
    natural, least = [], []
    for i, header in enumerate(headers):
        column = [row[i] for row in cells]
        natural.append(max([len(header), *(len(c) for c in column)]))
        # A header always wraps at its words; a cell only in a wrappable column.
        cell_least = [_longest_word(c) if wrappable[i] else len(c) for c in column]
        least.append(max([1, _longest_word(header), *cell_least]))
    room = width - _GUTTER * max(len(headers) - 1, 0)
    widths = list(natural)
    while sum(widths) > room:
        narrowable = [i for i in range(len(widths)) if widths[i] > least[i]]
        if not narrowable:
            return None
        widest = max(narrowable, key=lambda i: widths[i])
        widths[widest] -= 1
    return widths


def _table(title: str | None, caption: str, headers: Sequence[str], cells: Sequence[Sequence[str]],
           numeric: Sequence[bool], widths: Sequence[int]) -> RenderableType:
    # Rich wraps a title or caption to the table's own width, so a narrow table (`SELECT 1`) printed
    # its row count a letter a line: text wider than the table goes above and below it instead.
    span = sum(widths) + 2 * (len(widths) - 1)
    inside = len(caption) <= span and len(title or "") <= span
    table = Table(title=title if inside else None, caption=caption if inside else None, box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, collapse_padding=True)
    for header, is_num, w in zip(headers, numeric, widths, strict=True):
        table.add_column(header, justify="right" if is_num else "left", width=w, overflow="fold")
    for row in cells:
        table.add_row(*row)
    if inside:
        return table
    above = [Text(title, style="italic")] if title else []
    return Group(*above, table, Text(caption, style="dim italic"))


def _pivot(title: str | None, caption: str, columns: Sequence[str], cells: Sequence[Sequence[str]]
           ) -> RenderableType:
    width = max((len(c) for c in columns), default=0)
    parts: list[RenderableType] = []
    if title:
        parts.append(Text(title, style="bold"))
    for n, row in enumerate(cells, 1):
        parts.append(Text(f"-- row {n} --", style="dim"))
        for name, value in zip(columns, row, strict=True):
            parts.append(Text(f"{name.rjust(width)}: {value}"))
    parts.append(Text(caption, style="dim italic"))
    return Group(*parts)


def fitted_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], width: int, to_text: Callable[[Any], str],
                 title: str | None = None) -> RenderableType:
    """The rows as the first shape (exact, abbreviated, pivoted) that fits ``width`` columns."""
    count = f"{len(rows)} row{'s' if len(rows) != 1 else ''}"
    headers = [header_label(c) for c in columns]
    numeric = [bool(rows) and all(is_number(r[i]) for r in rows if r[i] is not None) for i in range(len(columns))]
    # Headers always wrap at their words; numbers never wrap inside a cell.
    exact = [[to_text(v) for v in row] for row in rows]
    text_wraps = [not n for n in numeric]
    widths = column_widths(headers, exact, text_wraps, width)
    if widths is not None:
        return _table(title, count, headers, exact, numeric, widths)
    short = [[compact_number(v) if is_number(v) else to_text(v).replace("_", " ") for v in row] for row in rows]
    widths = column_widths(headers, short, text_wraps, width)
    if widths is not None:
        return _table(title, f"{count}; abbreviated (--format csv for exact values)", headers, short, numeric, widths)
    return _pivot(title, count, list(columns), exact)


class Fitted:
    """A table that takes the shape fitting the width it is printed at (``console.print(Fitted(...))``)."""

    def __init__(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], to_text: Callable[[Any], str],
                 title: str | None = None) -> None:
        self.columns, self.rows, self.to_text, self.title = columns, rows, to_text, title

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield fitted_table(self.columns, self.rows, options.max_width, self.to_text, title=self.title)
