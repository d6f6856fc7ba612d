"""``creditflow report --html``: one self-contained page of charts.

Each chart is a query (``CHARTS``) whose rows become a small JSON chart description; the page
carries that JSON and one inline script (``chart_script.SCRIPT``) that draws every chart as SVG.
Nothing is fetched: no CDN, no fonts, no images, so the page opens offline and can be mailed.
Values are drawn from floats but every mark's tooltip shows the exact value as ClickHouse
returned it.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from streams.reporting.chart_script import SCRIPT

# Each window: the last N UTC days including today, bound as {days:UInt32} (Date32 does not wrap).
_IN_WINDOW = "toDate32({col}) > toDate32(now('UTC')) - {{days:UInt32}}"


@dataclass(frozen=True)
class ChartSpec:
    id: str
    title: str
    note: str
    kind: Literal["line", "bars"]
    # "long": rows are (x, series, value); "wide": rows are (x, value per column), a series per column.
    shape: Literal["long", "wide"]
    sql: str
    stacked: bool = False


CHARTS: tuple[ChartSpec, ...] = (
    ChartSpec("scorecard", "Programme scorecard: credit recipients / the others",
              "Each measure for credit recipients divided by the same for the others (1 = no difference): "
              "conversion to a paid plan, feature categories used per account and per team, and churn in the "
              "first billing cycle (lower is better). The values behind each ratio are in the table "
              "(v_programme_scorecard).", "bars", "wide", """
        SELECT metric, ifNull(ratio, 0) AS `recipients / others`
        FROM v_programme_scorecard ORDER BY ord"""),
    ChartSpec("credits", "List credits by feature per day", "What requests would cost at list price, by the "
              "feature category that priced them (v_credits_by_feature).", "line", "long", f"""
        SELECT toString(day), category, sum(list_credits) FROM v_credits_by_feature
        WHERE {_IN_WINDOW.format(col="day")} GROUP BY day, category ORDER BY day, category"""),
    ChartSpec("subsidy", "Subsidy by feature per day", "List minus charged credits: what the multipliers gave "
              "away, by feature category (v_credits_by_feature).", "line", "long", f"""
        SELECT toString(day), category, sum(subsidy_credits) FROM v_credits_by_feature
        WHERE {_IN_WINDOW.format(col="day")} GROUP BY day, category ORDER BY day, category"""),
    ChartSpec("adoption", "Adoption breadth: teams by feature categories used, per week",
              "Teams stacked by how many of the four categories they used that week (v_feature_adoption).",
              "bars", "long", """
        SELECT toString(week), concat(toString(features_used), ' of 4'), count() FROM v_feature_adoption
        WHERE toDate32(week) > toMonday(toDate32(now('UTC')) - {days:UInt32}) - 7
        GROUP BY week, features_used ORDER BY week, features_used""", stacked=True),
    ChartSpec("grants", "Grant utilisation by campaign", "Credits used, still left, and left to expire unused "
              "(v_campaign_utilisation).", "bars", "wide", """
        SELECT campaign, used_credits AS used, remaining_credits - expired_unused_credits AS left,
               expired_unused_credits AS expired_unused
        FROM v_campaign_utilisation ORDER BY granted_credits DESC, campaign""", stacked=True),
    ChartSpec("burndown", "Grant burn-down", "Credits left on all issued grants at the end of each day, as the "
              "ledger debits them (credit_ledger, v_grant_utilisation).", "line", "wide", f"""
        SELECT toString(day) AS d, granted - sum(used) OVER (ORDER BY day) AS credits_left
        FROM (SELECT toDate(occurred_at) AS day, CAST(sum(amount_micro) AS Decimal128(6)) / 1000000 AS used
              FROM credit_ledger WHERE grant_id != '' GROUP BY day) AS l
        CROSS JOIN (SELECT sum(amount_credits) AS granted FROM v_grant_utilisation) AS g
        QUALIFY {_IN_WINDOW.format(col="day")}
        ORDER BY d"""),
    ChartSpec("expiry", "Grant expiry", "Credits left on live grants, by the week they expire "
              "(v_grant_utilisation).", "bars", "wide", """
        SELECT toString(toMonday(expires_at)) AS week, sum(remaining_credits) AS credits_left
        FROM v_grant_utilisation
        WHERE NOT expired AND NOT revoked AND expires_at IS NOT NULL
        GROUP BY week ORDER BY week LIMIT 26"""),
    ChartSpec("alerts", "Gaming alerts and verdicts by rule", "Alerts first seen in the window, and the "
              "reviewers' latest verdicts (v_alert_volume).", "bars", "wide", f"""
        SELECT rule_id, sum(v.alerts) AS alerts, sum(v.confirmed) AS confirmed,
               sum(v.false_positive) AS false_positive, sum(v.alerts) - sum(v.reviewed) AS unreviewed
        FROM v_alert_volume AS v WHERE {_IN_WINDOW.format(col="day")}
        GROUP BY rule_id ORDER BY rule_id"""),
    ChartSpec("dead_letters", "Dead letters by kind", "Input that could not be decoded or validated, kept with "
              "its bytes for replay (dead_letters).", "bars", "wide", f"""
        SELECT error_kind, count() AS dead_letters FROM dead_letters FINAL
        WHERE {_IN_WINDOW.format(col="failed_at")}
        GROUP BY error_kind ORDER BY dead_letters DESC, error_kind"""),
    ChartSpec("failures_over_time", "Failure modes over time",
              "Sampled requests that did not succeed, per day and outcome (v_failure_modes).", "line", "long", f"""
        SELECT toString(day), outcome, sum(samples) FROM v_failure_modes
        WHERE {_IN_WINDOW.format(col="day")} AND outcome != 'SUCCESS'
        GROUP BY day, outcome ORDER BY day, outcome"""),
    ChartSpec("failures_by_category", "Failure modes by category and model",
              "Failed samples by feature category and model, split by outcome (v_failure_modes).", "bars", "long",
              f"""
        SELECT concat(category, ' · ', model), outcome, sum(samples) FROM v_failure_modes
        WHERE {_IN_WINDOW.format(col="day")} AND outcome != 'SUCCESS'
        GROUP BY category, model, outcome ORDER BY category, model, outcome""", stacked=True),
    ChartSpec("failures_by_depth", "Failure rate by reasoning depth and context size",
              "Share of sampled requests that failed, per reasoning-depth bucket, one series per context band "
              "(v_failure_modes).", "bars", "long", f"""
        SELECT reasoning_depth, context_band, CAST(sum(failures) AS Decimal128(6)) / sum(samples)
        FROM v_failure_modes WHERE {_IN_WINDOW.format(col="day")}
        GROUP BY reasoning_depth, context_band
        ORDER BY reasoning_depth, indexOf(['<8k', '8k-32k', '32k-100k', '100k-200k', '>=200k'], context_band)"""),
    ChartSpec("pain_by_tool", "Integration pain points by tool",
              "Tool-use samples that ended in an error, a timeout or a client abort, per tool "
              "(v_integration_pain_points).", "bars", "wide", f"""
        SELECT tool, sum(errors) AS errors, sum(timeouts) AS timeouts, sum(aborts) AS aborts
        FROM v_integration_pain_points WHERE {_IN_WINDOW.format(col="day")}
        GROUP BY tool ORDER BY sum(failures) DESC, tool LIMIT 20""", stacked=True),
    ChartSpec("pain_by_surface", "Integration pain points by surface",
              "The same failures per product surface (v_integration_pain_points).", "bars", "wide", f"""
        SELECT surface, sum(errors) AS errors, sum(timeouts) AS timeouts, sum(aborts) AS aborts
        FROM v_integration_pain_points WHERE {_IN_WINDOW.format(col="day")}
        GROUP BY surface ORDER BY sum(failures) DESC, surface""", stacked=True),
    ChartSpec("refinement", "Refinement samples by priority", "Requests sampled for the model-refinement "
              "loop, by data-collection priority (refinement_samples).", "bars", "wide", f"""
        SELECT priority, count() AS samples FROM refinement_samples FINAL
        WHERE {_IN_WINDOW.format(col="occurred_at")}
        GROUP BY priority ORDER BY indexOf(['VERY_HIGH', 'HIGH', 'MEDIUM', 'LOW'], priority), priority"""),
)


def _number(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float | Decimal):
        return float(value)
    return 0.0


def _exact(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, Decimal):
        text = format(value, "f")
        return (text.rstrip("0").rstrip(".") or "0") if "." in text else text
    return str(value)


def chart_data(spec: ChartSpec, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """The JSON the page's script draws from: x labels and one value list per series."""
    x: list[str] = []
    series: dict[str, dict[Any, Any]] = {}
    if spec.shape == "long":
        for label, name, value in rows:
            if str(label) not in x:
                x.append(str(label))
            series.setdefault(str(name), {})[str(label)] = value
    else:
        for row in rows:
            x.append(str(row[0]))
            for name, value in zip(columns[1:], row[1:], strict=True):
                series.setdefault(name.replace("_", " "), {})[str(row[0])] = value
    return {
        "id": spec.id, "title": spec.title, "kind": spec.kind, "stacked": spec.stacked, "x": x,
        "series": [{"name": name, "values": [_number(v.get(label)) for label in x],
                    "exact": [_exact(v.get(label, 0)) for label in x]} for name, v in series.items()],
    }


_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2733;
       background: #f6f7f9; }
header { padding: 20px 28px; background: #1d2733; color: #fff; }
header h1 { margin: 0 0 4px; font-size: 20px; } header p { margin: 0; opacity: .8; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 16px; padding: 16px; }
figure { margin: 0; background: #fff; border: 1px solid #dde2e8; border-radius: 6px; padding: 12px 16px; }
figcaption h2 { margin: 0; font-size: 15px; } figcaption p { margin: 2px 0 8px; color: #5b6875; font-size: 12px; }
svg { width: 100%; height: auto; } .grid { stroke: #e6e9ee; } .tick { font-size: 11px; fill: #5b6875; }
.legend { font-size: 12px; color: #33414f; } .legend span { margin-right: 14px; white-space: nowrap; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; border-radius: 2px; }
.empty { color: #8a96a3; font-style: italic; } table { border-collapse: collapse; font-size: 12px; margin-top: 8px; }
td, th { padding: 2px 8px; border-bottom: 1px solid #eef0f3; text-align: right; }
td:first-child, th:first-child { text-align: left; }
"""


def page(charts: Sequence[dict[str, Any]], *, days: int, source: str, generated_at: dt.datetime,
         scorecard: tuple[Sequence[str], Sequence[Sequence[Any]]] | None = None) -> str:
    """The whole HTML page, self-contained."""
    figures = []
    for spec in CHARTS[:len(charts)]:
        extra = ""
        if spec.id == "scorecard" and scorecard is not None:
            cols, rows = scorecard
            head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in cols)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(_exact(v))}</td>" for v in r) + "</tr>" for r in rows)
            extra = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        figures.append(
            f'<figure class="chart" data-chart="{html.escape(spec.id)}"><figcaption><h2>{html.escape(spec.title)}'
            f'</h2><p>{html.escape(spec.note)}</p></figcaption><div class="plot"></div>{extra}</figure>')
    # "</" would end the script element early; JSON allows the escaped solidus.
    payload = json.dumps(list(charts), ensure_ascii=False).replace("</", "<\\/")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>creditflow report</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>creditflow report</h1><p>last {days} days · generated {generated_at:%Y-%m-%d %H:%M} UTC · "
        f"{html.escape(source)}</p></header><main>{''.join(figures)}</main>"
        f'<script type="application/json" id="chart-data">{payload}</script>'
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def build_page(run: Callable[[str, dict[str, Any]], tuple[list[str], list[Sequence[Any]]]], days: int, source: str,
               now: dt.datetime | None = None) -> str:
    """Query every chart through ``run(sql, params)`` and assemble the page."""
    charts = []
    for spec in CHARTS:
        params: dict[str, Any] = {"days": days} if "{days:" in spec.sql else {}
        columns, rows = run(spec.sql, params)
        charts.append(chart_data(spec, columns, rows))
    scorecard = run("SELECT metric, recipients, non_recipients, ratio, recipients_base, non_recipients_base "
                    "FROM v_programme_scorecard ORDER BY ord", {})
    return page(charts, days=days, source=source, generated_at=now or dt.datetime.now(dt.UTC), scorecard=scorecard)
