"""``creditflow demo``: the whole pipeline on one machine, end to end, with a summary at the end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import sys
import time
from typing import Any

import faust
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sinks.service import ClickHouseSink
from streams.cli.terminal_tables import Fitted
from streams.detection.alerts import measure_text
from streams.processor import Processor
from streams.producer import CreditflowProducer
from streams.runtime.pipeline import build, prepare
from streams.runtime.topics import INTERACTION_EVENTS
from streams.settings import Role, Settings
from streams.synthetic.generator import DAY_MS, Generator
from streams.synthetic.scenarios import SCENARIO_RULE, Label, ScenarioSet, gaming_sample
from streams.synthetic.subscriptions import subscription_changes

# Labelled gaming mixed into the demo's traffic, one scenario per rule shown; the rest stay for
# `creditflow evaluate`.
DEMO_SCENARIOS = ("round_the_clock", "farming", "replayed_prompts", "burn_before_expiry", "spike", "padding")
# Detectors re-evaluate quiet accounts every CREDITFLOW_DETECTOR_FLUSH_SECONDS; alerts may trail the events.
_ALERT_WAIT_S = 90.0
INTERRUPTED = 130  # the exit status of a process ended by SIGINT, as shells report it
# app.stop() after Ctrl-C: long enough for the workers to leave their groups, bounded if the broker is gone.
_STOP_TIMEOUT_S = 60.0

CREDITS_BY_CATEGORY = """
SELECT category,
       count() AS events,
       CAST(sum(list_micro) AS Decimal128(6)) / 1000000 AS list_credits,
       CAST(sum(charged_micro) AS Decimal128(6)) / 1000000 AS charged_credits,
       CAST(sum(subsidy_micro) AS Decimal128(6)) / 1000000 AS subsidy_credits,
       CAST(sum(grant_funded_micro) AS Decimal128(6)) / 1000000 AS grant_funded,
       CAST(sum(subscription_funded_micro) AS Decimal128(6)) / 1000000 AS subscription_funded
FROM events
WHERE startsWith(account_id, {prefix:String})
GROUP BY category
ORDER BY list_credits DESC
"""

GRANT_UTILISATION = """
SELECT g.campaign,
       count() AS grants,
       CAST(sum(g.amount_micro) AS Decimal128(6)) / 1000000 AS granted,
       CAST(sum(ifNull(l.used, 0)) AS Decimal128(6)) / 1000000 AS used,
       round(sum(ifNull(l.used, 0)) / greatest(sum(g.amount_micro), 1), 4) AS utilisation
FROM (SELECT grant_id, any(campaign) AS campaign, any(amount_micro) AS amount_micro
      FROM credit_grants FINAL
      WHERE event_type = 'ISSUED' AND startsWith(account_id, {prefix:String})
      GROUP BY grant_id) AS g
LEFT JOIN (SELECT grant_id, sum(amount_micro) AS used FROM credit_ledger
           WHERE startsWith(account_id, {prefix:String}) GROUP BY grant_id) AS l USING (grant_id)
GROUP BY g.campaign
ORDER BY g.campaign
"""


PRIORITIES = """
SELECT e.priority, e.events, ifNull(r.samples, 0) AS refinement_samples,
       round(ifNull(r.samples, 0) / greatest(e.events, 1), 4) AS sampled_share
FROM (SELECT priority, count() AS events FROM events WHERE startsWith(account_id, {prefix:String})
      GROUP BY priority) AS e
LEFT JOIN (SELECT priority, count() AS samples FROM refinement_samples FINAL
           WHERE startsWith(account_id, {prefix:String}) GROUP BY priority) AS r USING (priority)
ORDER BY indexOf(['VERY_HIGH', 'HIGH', 'MEDIUM', 'LOW'], e.priority), e.priority
"""

REFINEMENT_BY_CATEGORY = """
SELECT category, outcome, count() AS samples, round(avg(reasoning_steps), 1) AS avg_steps,
       max(context_window_tokens) AS max_context
FROM refinement_samples FINAL
WHERE startsWith(account_id, {prefix:String})
GROUP BY category, outcome
ORDER BY samples DESC, category, outcome
LIMIT 8
"""

# Alerts about this run's accounts: the entity itself, or the accounts behind a fingerprint.
ALERTS = """
SELECT alert_id, rule_id, rule_name, entity_type, entity_id, related_entities, severity, score, observed,
       limit_value, counter_signals, evidence, estimated_credits_exposed_micro, suggested_action,
       toUnixTimestamp64Milli(window_start), toUnixTimestamp64Milli(window_end), observed_label, limit_label
FROM gaming_alerts FINAL
WHERE startsWith(entity_id, {prefix:String})
   OR arrayExists(x -> startsWith(x, concat('account:', {prefix:String})), related_entities)
ORDER BY rule_id, alert_id
"""
_ALERT_FIELDS = ("alert_id", "rule_id", "rule_name", "entity_type", "entity_id", "related_entities", "severity",
                 "score", "observed", "limit", "counter_signals", "evidence", "exposed_micro",
                 "suggested_action", "window_start", "window_end", "observed_label", "limit_label")
SEVERITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")


def interleave(background: list[dict[str, Any]], mixed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``mixed`` spread evenly through ``background``, each list keeping its own order."""
    if not mixed:
        return list(background)
    out: list[dict[str, Any]] = []
    step = (len(background) + len(mixed)) / len(mixed)
    it_b, it_m = iter(background), iter(mixed)
    next_mixed = step / 2
    for i in range(len(background) + len(mixed)):
        if i >= next_mixed:
            item = next(it_m, None)
            next_mixed += step
            if item is not None:
                out.append(item)
                continue
        item = next(it_b, None)
        if item is None:
            item = next(it_m)
        out.append(item)
    return out


def alert_accounts(alert: dict[str, Any]) -> list[str]:
    if alert["entity_type"] == "account":
        return [alert["entity_id"]]
    return [r.split(":", 1)[1] for r in alert["related_entities"] if r.startswith("account:")]


def alerts_by_rule(alerts: list[dict[str, Any]], labels: dict[str, Label]) -> list[tuple[Any, ...]]:
    """One row per rule: alerts, the worst severity, credits exposed, and the labelled scenarios of the
    accounts it flagged (so the demo shows each planted scheme being caught)."""
    rows: dict[str, dict[str, Any]] = {}
    for a in alerts:
        row = rows.setdefault(a["rule_id"], {"name": a["rule_name"], "alerts": 0, "worst": "LOW", "exposed": 0,
                                             "scenarios": set()})
        row["alerts"] += 1
        if SEVERITIES.index(a["severity"]) > SEVERITIES.index(row["worst"]):
            row["worst"] = a["severity"]
        row["exposed"] += int(a["exposed_micro"])
        row["scenarios"] |= {labels[acc].scenario for acc in alert_accounts(a) if acc in labels}
    return [(rule, r["name"], r["alerts"], r["worst"], _credits(r["exposed"]),
             ", ".join(sorted(r["scenarios"])) or "-") for rule, r in sorted(rows.items())]


def _credits(micro: int) -> str:
    return f"{micro / 1_000_000:,.2f}"


def explain(alert: dict[str, Any], labels: dict[str, Label]) -> list[str]:
    """A reviewer's reading of one alert, in plain lines."""
    from streams.detection.rulebook import DETECTORS_BY_ID

    rule = DETECTORS_BY_ID.get(alert["rule_id"])
    accounts = alert_accounts(alert)
    scenario = next((labels[a].scenario for a in accounts if a in labels), None)
    lines = [
        f"[bold]{alert['rule_id']} {alert['rule_name']}[/bold] ({alert['severity']}, score {alert['score']:.2f}) "
        f"on {alert['entity_type']} {alert['entity_id']}"
        + (f" - planted by the '{scenario}' scenario" if scenario else ""),
    ]
    if rule is not None:
        lines.append(f"  why it fires: {rule.signal}")
    lines.append(f"  observed {measure_text(alert['observed'], alert.get('observed_label'))} against a limit of "
                 f"{measure_text(alert['limit'], alert.get('limit_label'))}; "
                 f"{_credits(int(alert['exposed_micro']))} credits exposed")
    if len(accounts) > 1 or alert["entity_type"] != "account":
        lines.append(f"  accounts behind it: {', '.join(accounts[:5])}{' ...' if len(accounts) > 5 else ''}")
    if alert["counter_signals"]:
        lines.append("  counter-signals weighed: " + "; ".join(alert["counter_signals"]))
    evidence = alert["evidence"]
    with contextlib.suppress(TypeError, ValueError):
        evidence = json.loads(evidence)
    if isinstance(evidence, dict) and evidence.get("counts"):
        lines.append("  evidence: " + ", ".join(f"{k}={v}" for k, v in sorted(evidence["counts"].items())))
    lines.append(f"  suggested action: {alert['suggested_action']}")
    lines.append(f"  review it: creditflow alerts show {alert['alert_id']}")
    return lines


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


# Undecodable records sent on purpose, so the dead-letter path shows up in the summary and report.
MALFORMED = (b"not avro at all", b"\xc3\x01truncated", b"{\"json\": \"is not the wire format\"}")


async def _produce(settings: Settings, bootstrap: str, grants: list[dict[str, Any]], events: list[dict[str, Any]],
                   changes: list[dict[str, Any]], console: Console, processor: Processor) -> int:
    n = len(events)
    async with CreditflowProducer(settings, bootstrap_servers=bootstrap) as producer:
        for grant in grants:
            await producer.emit_grant(grant)
        for change in changes:
            await producer.emit_subscription_change(change)
        await producer.flush()
        await _send_malformed(settings, bootstrap)
        # Grants are issued before the traffic they fund; let the processor hold them first, since
        # Kafka orders records within a topic partition, not across the grants and events topics.
        holders = {g["account_id"] for g in grants}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not holders <= processor.grants.keys():
            await asyncio.sleep(0.1)
        with _progress(console) as progress:
            task = progress.add_task("producing events", total=n)
            for i, ev in enumerate(events, 1):
                await producer.emit_interaction(ev)
                if i % 1000 == 0:
                    progress.update(task, completed=i)
                    await asyncio.sleep(0)
            await producer.flush()
            progress.update(task, completed=n)
    return len(grants)


async def _send_malformed(settings: Settings, bootstrap: str) -> None:
    from streams.runtime.kafka_clients import clients_for

    # Raw bytes, so a plain producer with the project's connection settings, not CreditflowProducer.
    raw = clients_for(bootstrap, settings).producer()
    await raw.start()
    try:
        for i, value in enumerate(MALFORMED):
            await raw.send_and_wait(settings.topic(INTERACTION_EVENTS), value, key=f"malformed-{i}".encode())
    finally:
        await raw.stop()


async def _wait_landed(sink: ClickHouseSink, prefix: str, n: int, grants: int, timeout: float,
                       console: Console) -> int:
    deadline = time.monotonic() + timeout
    landed = 0
    with _progress(console) as progress:
        task = progress.add_task("landed in ClickHouse", total=n)
        while time.monotonic() < deadline:
            rows = await sink.query(
                "SELECT (SELECT count() FROM events WHERE startsWith(account_id, {p:String})), "
                "(SELECT count() FROM credit_grants FINAL WHERE startsWith(account_id, {p:String}))",
                {"p": prefix})
            landed, grants_landed = int(rows[0][0]), int(rows[0][1])
            progress.update(task, completed=landed)
            if landed >= n and grants_landed >= grants:
                break
            await asyncio.sleep(0.5)
    return landed


async def _wait_alerts(sink: ClickHouseSink, prefix: str, rules: set[str], console: Console
                       ) -> list[dict[str, Any]]:
    """This run's alerts, once every planted scheme's rule has fired (or the wait is over)."""
    deadline = time.monotonic() + _ALERT_WAIT_S
    with console.status("waiting for the detectors' alerts to land..."):
        while True:
            rows = await sink.query(ALERTS, {"prefix": prefix})
            alerts = [dict(zip(_ALERT_FIELDS, r, strict=True)) for r in rows]
            if rules <= {a["rule_id"] for a in alerts} or time.monotonic() >= deadline:
                return alerts
            await asyncio.sleep(1.0)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _table(title: str, header: list[str], rows: list[tuple[Any, ...]]) -> Fitted:
    return Fitted(header, rows, _cell, title=title)


async def _run(settings: Settings, bootstrap: str, events: int, accounts: int, seed: int, timeout: float,
               console: Console, serve: bool = False) -> int:
    pipeline = build(settings, bootstrap)
    app = pipeline.app
    run_id = settings.topic_prefix.strip(".-_") or secrets.token_hex(3)
    # Dated over the last day, so `creditflow report` (the last 30 days) shows the run afterwards.
    now_ms = int(time.time() * 1000)
    gen = Generator(accounts=accounts, seed=seed, account_prefix=f"{run_id}-acct", start_ms=now_ms - DAY_MS,
                    span_ms=DAY_MS)
    gaming = gaming_sample(DEMO_SCENARIOS, seed, now_ms - 6 * DAY_MS, account_prefix=f"{run_id}-acct-gaming-")
    started = time.monotonic()
    # Ctrl-C sets a flag, and the demo's own work is what gets cancelled, never app.start(): a
    # cancellation landing there was swallowed by a Faust service (the demo then ran to its end) or
    # left a half-started non-daemon thread behind that kept the process from exiting.
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    try:
        await app.start()
        if interrupted.is_set():
            return INTERRUPTED
        work = asyncio.ensure_future(_produce_and_report(app, settings, bootstrap, gen, gaming, events, run_id,
                                                         started, timeout, console, serve))
        stop = asyncio.ensure_future(interrupted.wait())
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            rc: int = work.result()
            if serve and rc == 0:
                # Live SQL stays up until Ctrl-C.
                await stop
            stop.cancel()
            return rc
        stop.cancel()
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work
        return INTERRUPTED
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(app.stop(), _STOP_TIMEOUT_S)


async def _produce_and_report(app: faust.App, settings: Settings, bootstrap: str, gen: Generator,
                              gaming: ScenarioSet, events: int, run_id: str, started: float, timeout: float,
                              console: Console, serve: bool) -> int:
    sink: ClickHouseSink = app.creditflow_sink  # type: ignore[attr-defined]
    processor: Processor = app.creditflow_processor  # type: ignore[attr-defined]
    prefix = f"{run_id}-acct"
    traffic = interleave(list(gen.events(events)), gaming.events)
    total = len(traffic)
    console.print(f"{events:,} events of ordinary traffic, with {len(gaming.events):,} events of "
                  f"{len(DEMO_SCENARIOS)} planted gaming schemes mixed in ({', '.join(DEMO_SCENARIOS)})")
    all_grants = gen.grants() + gaming.grants
    changes = subscription_changes((a.account_id for a in gen.account_list), {g["account_id"] for g in all_grants},
                                   int(time.time() * 1000), gen.seed)
    grants = await _produce(settings, bootstrap, all_grants, traffic, changes, console, processor)
    landed = await _wait_landed(sink, prefix, total, grants, timeout, console)
    elapsed = time.monotonic() - started
    rows = await sink.query(CREDITS_BY_CATEGORY, {"prefix": prefix})
    console.print(_table("credits by feature category (this run)",
                         ["category", "events", "list", "charged", "subsidy", "from grants",
                          "from subscription"], rows))
    utilisation = await sink.query(GRANT_UTILISATION, {"prefix": prefix})
    console.print(_table("grant utilisation by campaign", ["campaign", "grants", "granted", "used",
                                                           "utilisation"], utilisation))
    priorities = await sink.query(PRIORITIES, {"prefix": prefix})
    console.print(_table("data-collection priority and refinement samples", ["priority", "events", "samples",
                                                                              "sampled share"], priorities))
    samples = await sink.query(REFINEMENT_BY_CATEGORY, {"prefix": prefix})
    console.print(_table("refinement samples by category and outcome (top 8)",
                         ["category", "outcome", "samples", "avg steps", "max context"], samples))
    scorecard = await sink.query("SELECT metric, recipients, non_recipients, ratio FROM v_programme_scorecard "
                                 "ORDER BY ord")
    console.print(_table("programme scorecard (all data): credit recipients vs the others",
                         ["metric", "recipients", "others", "ratio"], scorecard))
    wanted = {SCENARIO_RULE[name] for name in DEMO_SCENARIOS}
    alerts = await _wait_alerts(sink, prefix, wanted, console)
    console.print(_table("gaming alerts by rule", ["rule", "name", "alerts", "worst", "credits exposed",
                                                   "planted scheme caught"], alerts_by_rule(alerts, gaming.labels)))
    if alerts:
        worst = max(alerts, key=lambda a: (SEVERITIES.index(a["severity"]), a["score"], a["alert_id"]))
        console.print("[bold]one alert, explained[/bold]")
        for line in explain(worst, gaming.labels):
            console.print(line)
    missed = sorted(wanted - {a["rule_id"] for a in alerts})
    if missed:
        console.print(f"[yellow]no alert yet from {', '.join(missed)} (the detectors re-evaluate quiet "
                      f"accounts every {settings.detector_flush_seconds:g}s)[/yellow]")
    ok = landed == total
    style = "green" if ok else "red"
    console.print(f"[{style}]{landed:,} of {total:,} events landed in ClickHouse "
                  f"in {elapsed:.1f}s[/{style}] (run {run_id}, sink batches {sink.stats.batches}, "
                  f"dead letters {sink.stats.rows.get('dead_letters', 0)}, alerts {len(alerts)})")
    _next_steps(console, app, alerts, serve)
    return 0 if ok else 1


def _next_steps(console: Console, app: faust.App, alerts: list[dict[str, Any]], serve: bool) -> None:
    url = getattr(getattr(app, "creditflow_web", None), "url", None) or "(not bound)"
    when = "until Ctrl-C" if serve else "while the demo ran; `creditflow demo --serve` keeps it up"
    console.print(f"\n[bold]live SQL[/bold] (ClickHouse HTTP, read-only) at {url} {when}:")
    console.print(f"  curl '{url}/?query=SELECT+category,count()+FROM+events+GROUP+BY+category'")
    console.print(f"  python -c \"import clickhouse_connect as c; print(c.get_client(dsn='{url}')"
                  ".query('SELECT count() FROM events').result_rows)\"")
    console.print("[bold]next[/bold] (they find a running worker, or open ClickHouse when none runs):")
    console.print("  creditflow report                      # credits, adoption, grants, scorecard, alerts")
    console.print("  creditflow report --html report.html   # the same as charts, one self-contained page")
    console.print('  creditflow query "SELECT rule_id, count() FROM gaming_alerts FINAL GROUP BY rule_id"')
    if alerts:
        console.print(f"  creditflow alerts show {alerts[0]['alert_id']}")
    console.print("  creditflow worker                      # keep the pipeline (and live SQL) running")


def run_demo(settings: Settings, *, events: int, accounts: int, seed: int, timeout: float,
             serve: bool = False) -> int:
    # Piped output (CI logs, files) gets room for exact credits instead of rich's 80-column default.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    run_id = secrets.token_hex(3)
    # Each run has its own topics and consumer groups, so a rerun never mixes with an earlier one.
    settings = settings.model_copy(update={
        "role": Role.ALL,
        "topic_prefix": settings.topic_prefix or f"demo-{run_id}.",
        "app_id": f"{settings.app_id}-demo-{run_id}",
    })
    broker = None
    rc: int | None = None
    try:
        console.print("[bold]creditflow demo[/bold]: starting Kafka (KRaft) and ClickHouse (chDB)...")
        bootstrap, broker = prepare(settings)
        reused = bool(broker is not None and getattr(broker, "reused", False))
        console.print(f"kafka {bootstrap}{' (reused)' if reused else ''}; "
                      f"clickhouse {settings.resolved_clickhouse_url}")
        if reused:
            broker = None  # not ours to stop
        rc = asyncio.run(_run(settings, bootstrap, events, accounts, seed, timeout, console, serve))
    except KeyboardInterrupt:  # outside the event loop (starting the broker)
        rc = INTERRUPTED
    finally:
        if rc == INTERRUPTED:
            console.print("[yellow]interrupted; stopping what the demo started[/yellow]")
        if broker is not None:
            broker.stop()
    return rc
