"""``creditflow query`` (read-only SQL with bound parameters) and ``creditflow report`` (canned
tables from the analyst views).

Values never go into the SQL text: ``--param name=value`` binds server-side to a ``{name:Type}``
placeholder, and ClickHouse parses the value as that type. Statements pass the same guard as live
SQL (``sinks/sql_guard.py``: one read-only statement, nothing that reaches files, URLs, other
servers or the shell) and run with ``readonly=1`` and the limits of ``CREDITFLOW_SQL_*``: through
a running worker's live SQL when one holds the chDB path, else on ClickHouse directly.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import sys
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import click
from rich.console import Console

from sinks.sql_guard import CANONICAL_SQL, SqlRefused, admit, vet
from streams.cli.clickhouse_target import Target, open_target
from streams.cli.terminal_tables import fitted_table
from streams.settings import get_settings

FORMATS = ("table", "csv", "json")
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---- pure helpers (tested directly) ----------------------------------------------------------

def parse_params(items: Sequence[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not _PARAM_NAME.match(name):
            raise click.UsageError(f"--param wants NAME=VALUE with NAME an identifier, got {item!r}")
        if name in params:
            raise click.UsageError(f"--param {name} given twice")
        params[name] = value
    return params


def check_read_only(sql: str, params: dict[str, str]) -> str:
    """The single statement to run, or a UsageError saying why it is refused (sinks/sql_guard.py)."""
    try:
        admitted = admit(sql)
    except SqlRefused as exc:
        raise click.UsageError(str(exc)) from None
    if admitted.fmt is not None:
        raise click.UsageError(f"drop the FORMAT {admitted.fmt} clause and use --format (table, csv, json)")
    for name in params:
        # Without a {name:Type} placeholder clickhouse-connect would fall back to client-side
        # formatting of the value into the SQL text; refuse instead.
        if not re.search(r"\{\s*" + re.escape(name) + r"\s*:", admitted.sql):
            raise click.UsageError(f"--param {name} has no {{{name}:Type}} placeholder in the query")
    return admitted.sql


def to_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return _decimal_text(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return bytes(value).hex()
    if isinstance(value, list | tuple | dict):
        return json.dumps(to_json(value), ensure_ascii=False)
    return str(value)


def _decimal_text(value: Decimal) -> str:
    # Fixed-point, never exponent notation; trailing zeros dropped but keep one digit.
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def to_json(value: Any) -> Any:
    """JSON-safe value. Decimals become strings so credits stay exact for the consumer."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return to_text(value)


# Shorter table headers for the report's credit columns (the section title says they are credits);
# CSV and JSON keep the full names.
SHORT_HEADERS = {"list_credits": "list", "charged_credits": "charged", "subsidy_credits": "subsidy",
                 "grant_funded_credits": "from_grants", "granted_credits": "granted", "used_credits": "used",
                 "remaining_credits": "left", "expired_unused_credits": "expired_unused",
                 "credits_exposed": "exposed", "false_positive": "false_pos", "non_recipients": "others",
                 "recipients_base": "n_recipients", "non_recipients_base": "n_others",
                 "p90_latency_ms": "p90_ms"}


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str, title: str | None = None,
           headers: dict[str, str] | None = None) -> None:
    if fmt == "json":
        click.echo(json.dumps([dict(zip(columns, map(to_json, row), strict=False)) for row in rows],
                              ensure_ascii=False, indent=2))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([to_text(v) for v in row] for row in rows)
    else:
        console = Console()
        shown = [(headers or {}).get(c, c) for c in columns]
        console.print(fitted_table(shown, rows, console.width, to_text, title=title))


def _client() -> Target:
    return open_target(get_settings())


# The limits clickhouse-connect appends to each statement on chDB, which ClickHouse's messages
# quote back ("In scope SELECT ... SETTINGS readonly = '1', ..."): the caller never wrote them.
_LIMITS_CLAUSE = re.compile(r"\s*SETTINGS readonly = '1'(?:, \w+ = '[^']*')*")


def _first_line(exc: Exception) -> str:
    text = _LIMITS_CLAUSE.sub("", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _run(target: Target, sql: str, params: dict[str, Any]) -> tuple[list[str], list[Sequence[Any]]]:
    client = target.client

    def text(question: str, bound: dict[str, Any]) -> str:
        # clickhouse-connect binds the values server-side, escaping them as ClickHouse reads them.
        answer = client.query(question, parameters=bound or None, settings=target.settings)
        return "\n".join(str(r[0]) for r in answer.result_rows)

    try:
        if target.settings:
            # The engine's own canonical reading, checked and run, like the bridge does (sinks/sql_guard.py).
            sql = vet(admit(sql), lambda statement: text(CANONICAL_SQL, {"statement": statement}),
                      lambda explained: text(f"EXPLAIN AST {explained}", params))
        result = client.query(sql, parameters=params or None, settings=target.settings or None)
    except SqlRefused as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:
        message = _first_line(exc)
        if "UNKNOWN_TABLE" in message or "Unknown table" in message:
            message += " (has `creditflow migrate` been run?)"
        raise click.ClickException(message) from None
    columns, rows = list(result.column_names), list(result.result_rows)
    if not columns and not rows:
        columns = _describe(target, sql, params)
    return columns, rows


def _describe(target: Target, sql: str, params: dict[str, Any]) -> list[str]:
    """Column names of an empty result. chDB returns no bytes at all for zero rows, so the names
    must be asked for separately; a statement DESCRIBE cannot wrap (SHOW, ...) just has none."""
    try:
        result = target.client.query(f"DESCRIBE ({sql})", parameters=params or None,
                                     settings=target.settings or None)
    except Exception:
        return []
    return [str(r[0]) for r in result.result_rows]


# ---- query -------------------------------------------------------------------------------------

@click.command("query")
@click.argument("sql")
@click.option("--param", "-p", "param_items", multiple=True, metavar="NAME=VALUE",
              help="bind VALUE to the {NAME:Type} placeholder (repeatable)")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
def query(sql: str, param_items: tuple[str, ...], fmt: str) -> None:
    """Run one read-only SQL statement against ClickHouse, e.g.

    creditflow query "SELECT * FROM v_credits_by_feature WHERE day >= {since:Date}" -p since=2025-01-01
    """
    params = parse_params(param_items)
    stmt = check_read_only(sql, params)
    columns, rows = _run(_client(), stmt, params)
    render(columns, rows, fmt)


# ---- report ------------------------------------------------------------------------------------

# (title, SQL). Every window is "the last N UTC days including today", bound as {days:UInt32}; the
# active policy's priced models are bound as {priced_models:Array(String)} (``report_params``).
REPORT_SECTIONS: tuple[tuple[str, str], ...] = (
    ("programme scorecard: credit recipients vs the others", """
        SELECT metric, recipients, non_recipients, ratio, recipients_base, non_recipients_base
        FROM v_programme_scorecard
        ORDER BY ord"""),
    ("credits by feature", """
        SELECT category, plan, model, sum(requests) AS requests, sum(list_credits) AS list_credits,
               sum(charged_credits) AS charged_credits, sum(subsidy_credits) AS subsidy_credits,
               sum(grant_funded_credits) AS grant_funded_credits
        FROM v_credits_by_feature
        WHERE toDate32(day) > toDate32(now('UTC')) - {days:UInt32}
        GROUP BY category, plan, model
        ORDER BY list_credits DESC, category, plan, model"""),
    ("feature adoption by week", """
        SELECT week, count() AS teams, countIf(used_extended_context) AS extended_context,
               countIf(used_complex_reasoning) AS complex_reasoning, countIf(used_tool_use) AS tool_use,
               countIf(used_standard_chat) AS standard_chat, countIf(features_used >= 2) AS multi_feature,
               countIf(features_used = 4) AS all_features
        FROM v_feature_adoption
        WHERE toDate32(week) > toMonday(toDate32(now('UTC')) - {days:UInt32}) - 7
        GROUP BY week
        ORDER BY week"""),
    ("grant utilisation by campaign", """
        SELECT campaign, grants, accounts, granted_credits, used_credits, remaining_credits, utilisation,
               expired_unused_credits, expired_grants, revoked_grants
        FROM v_campaign_utilisation
        ORDER BY granted_credits DESC, campaign"""),
    ("conversion to paid plans", """
        SELECT cohort, accounts, converted, conversion_rate FROM v_conversion ORDER BY cohort"""),
    ("failure modes (refinement samples)", """
        SELECT category, model, outcome, error_code, sum(samples) AS samples
        FROM v_failure_modes
        WHERE toDate32(day) > toDate32(now('UTC')) - {days:UInt32} AND outcome != 'SUCCESS'
        GROUP BY category, model, outcome, error_code
        ORDER BY samples DESC, category, model, outcome, error_code
        LIMIT 15"""),
    ("failure rate by reasoning depth and context size", """
        SELECT reasoning_depth, context_band, sum(samples) AS samples, sum(failures) AS failures,
               CAST(failures AS Decimal128(6)) / samples AS failure_rate
        FROM v_failure_modes
        WHERE toDate32(day) > toDate32(now('UTC')) - {days:UInt32}
        GROUP BY reasoning_depth, context_band
        ORDER BY reasoning_depth, indexOf(['<8k', '8k-32k', '32k-100k', '100k-200k', '>=200k'], context_band)"""),
    ("integration pain points by tool and surface", """
        SELECT tool, surface, sum(samples) AS samples, sum(errors) AS errors, sum(timeouts) AS timeouts,
               sum(aborts) AS aborts, CAST(sum(failures) AS Decimal128(6)) / samples AS failure_rate,
               max(p90_latency_ms) AS p90_latency_ms
        FROM v_integration_pain_points
        WHERE toDate32(day) > toDate32(now('UTC')) - {days:UInt32}
        GROUP BY tool, surface
        ORDER BY errors + timeouts + aborts DESC, tool, surface
        LIMIT 15"""),
    # Models the price table does not name were metered at its '*' fallback price (the processor
    # counts them live: creditflow_unpriced_events_total). Judged against the active policy.
    ("models metered at the '*' fallback price", """
        SELECT model, sum(requests) AS events, sum(list_credits) AS list_credits,
               sum(charged_credits) AS charged_credits, min(day) AS first_day, max(day) AS last_day
        FROM v_credits_by_feature
        WHERE toDate32(day) > toDate32(now('UTC')) - {days:UInt32}
          AND NOT has({priced_models:Array(String)}, model)
        GROUP BY model
        ORDER BY events DESC, model"""),
    ("alert volume and verdicts", """
        SELECT rule_id, severity, sum(alerts) AS alerts, sum(reviewed) AS reviewed,
               sum(confirmed) AS confirmed, sum(false_positive) AS false_positive,
               if(confirmed + false_positive = 0, NULL,
                  CAST(confirmed AS Decimal128(6)) / (confirmed + false_positive)) AS precision,
               sum(credits_exposed) AS credits_exposed
        FROM v_alert_volume
        WHERE toDate32(day) > toDate32(now('UTC')) - {days:UInt32}
        GROUP BY rule_id, severity
        ORDER BY alerts DESC, rule_id, severity"""),
)


def priced_models(policy_path: Any) -> list[str]:
    """The models the credit policy prices by name (not through its '*' fallback)."""
    from schemas.policy_file import PolicyError
    from streams.credits.policy import load_policy

    try:
        policy = load_policy(policy_path)
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from None
    return sorted(m for m in policy.prices if policy.is_priced(m))


def report_params(sql: str, days: int, priced: Sequence[str]) -> dict[str, Any]:
    """The values a section's placeholders ask for, and only those."""
    available: dict[str, Any] = {"days": days, "priced_models": list(priced)}
    return {name: value for name, value in available.items() if "{" + name + ":" in sql}


@click.command("report")
@click.option("--days", type=int, default=30, show_default=True,
              help="window for time-based sections, in UTC days including today")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--html", "html_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="write the report as one self-contained HTML page of charts to this file instead")
def report(days: int, fmt: str, html_path: str | None) -> None:
    """Canned analyst tables: the programme scorecard, credits by feature, adoption, grant
    utilisation, conversion, failure modes, integration pain points, unpriced models, alerts."""
    if not 1 <= days <= 36_500:
        raise click.UsageError(f"--days must be between 1 and 36500, got {days}")
    client = _client()
    if html_path is not None:
        from streams.reporting.html_page import build_page

        text = build_page(lambda sql, params: _run(client, sql, params), days, client.where)
        try:
            with open(html_path, "w", encoding="utf-8") as out:
                out.write(text)
        except OSError as exc:
            raise click.ClickException(f"cannot write {html_path}: {exc.strerror or exc}") from None
        click.echo(f"wrote {html_path} ({len(text) // 1024 + 1} KiB, last {days} days)")
        return
    results = []
    priced = priced_models(get_settings().policy_path)
    for title, sql in REPORT_SECTIONS:
        columns, rows = _run(client, sql, report_params(sql, days, priced))
        results.append((title, columns, rows))
    if fmt == "json":
        click.echo(json.dumps(
            {title: [dict(zip(cols, map(to_json, row), strict=False)) for row in rows]
             for title, cols, rows in results}, ensure_ascii=False, indent=2))
        return
    for n, (title, columns, rows) in enumerate(results):
        if fmt == "csv":
            if n:
                click.echo()
            click.echo(f"# {title} (last {days} days)" if "{days:" in REPORT_SECTIONS[n][1] else f"# {title}")
        render(columns, rows, fmt, title=f"{title} (credits)" if any(c.endswith("_credits") for c in columns)
               else title, headers=SHORT_HEADERS)
