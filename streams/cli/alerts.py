"""``creditflow alerts``: the fraud reviewer's commands.

- ``tail``: follow ``gaming-alerts`` (from the end, or ``--from-beginning``), filtered by minimum
  severity, rule and entity; human-readable lines or ``--json`` lines.
- ``show ALERT_ID``: the alert (ClickHouse ``gaming_alerts FINAL``) with its evidence, and the
  entity's recent usage from ``events``.
- ``review ALERT_ID --verdict ...``: publish a ``ReviewDecision`` to ``gaming-reviews``, keyed by the
  alert's entity id, which is what puts it on the partition (and so the detector worker) holding the
  entity's alert state (see ``streams/detection/engine.py``).

Errors a reviewer can cause print one line and exit non-zero (2 for bad arguments).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

import click

from streams.detection.alerts import measure_text
from streams.detection.rules.base import DAY_MS, SEVERITIES, SEVERITY_RANK
from streams.runtime.kafka_clients import KafkaClients, KafkaConfigError, clients_for
from streams.runtime.topics import GAMING_ALERTS, GAMING_REVIEWS

VERDICTS = ("confirmed", "false_positive", "benign", "needs_info")
_ALERT_ID_PREFIX = "al-"


def _ts(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def matches(alert: Mapping[str, Any], min_severity: str | None, rules: tuple[str, ...], entity: str | None) -> bool:
    """Whether an alert passes ``tail``'s filters (rule ids compare case-insensitively; the entity
    matches the entity id or any related ``type:id``)."""
    if min_severity and SEVERITY_RANK[alert["severity"]] < SEVERITY_RANK[min_severity.upper()]:
        return False
    if rules and alert["rule_id"].upper() not in {r.upper() for r in rules}:
        return False
    if not entity or entity == alert["entity_id"]:
        return True
    related = alert.get("related_entities") or ()
    return entity in related or any(r.split(":", 1)[-1] == entity for r in related)


def _observed(a: Mapping[str, Any]) -> str:
    return measure_text(a["observed"], a.get("observed_label"))


def _limit(a: Mapping[str, Any]) -> str:
    return measure_text(a["limit"], a.get("limit_label"))


def human_line(a: Mapping[str, Any]) -> str:
    exposed = a["estimated_credits_exposed_micro"] / 1_000_000
    related = len(a.get("related_entities") or ())
    return (f"{_ts(a['last_seen_at'])}  {a['severity']:<8} {a['rule_id']} {a['rule_name']}  "
            f"{a['entity_type']}:{a['entity_id']}{f' (+{related} related)' if related else ''}  "
            f"observed {_observed(a)} vs limit {_limit(a)}  score {a['score']:.2f}  "
            f"exposed {exposed:,.2f} cr  {a['status']} x{a['firings']}  {a['alert_id']}")


def _settings() -> Any:
    from streams.settings import Settings

    return Settings()  # a bad variable is named in one line by the command group


def _bootstrap(settings: Any) -> KafkaClients:
    """The configured cluster, else the local broker under the data dir (reused when running, as
    every other command does)."""
    if settings.kafka_bootstrap_servers:
        return _clients(settings, None)
    from streams.runtime.topics import resolve_bootstrap

    try:
        bootstrap, _broker = resolve_bootstrap(settings, timeout=30)
    except Exception as exc:
        raise click.ClickException(f"no Kafka: set KAFKA_BOOTSTRAP_SERVERS or start a worker ({exc})") from None
    return _clients(settings, bootstrap)


def _clients(settings: Any, bootstrap: str | None) -> KafkaClients:
    try:
        return KafkaClients(settings, bootstrap)
    except KafkaConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def alerts() -> None:
    """Credit-gaming alerts: follow them, inspect one, record a verdict."""


# ---- tail --------------------------------------------------------------------------------------

async def _tail(bootstrap: KafkaClients | str, topic: str, from_beginning: bool, follow: bool,
                keep: Any, emit: Any) -> int:
    from aiokafka import TopicPartition

    from streams.wire.codec import DecodeError, Decoder

    decoder = Decoder("GamingAlert")
    consumer = clients_for(bootstrap).consumer(group_id=None, enable_auto_commit=False)
    shown = 0
    try:
        await consumer.start()  # inside: a client that failed to start is closed too
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise click.ClickException(f"topic {topic} does not exist (is the prefix right?)")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        ends = await consumer.end_offsets(tps)
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    try:
                        alert = decoder.decode(r.value)
                    except DecodeError as exc:
                        click.echo(f"warning: skipping an undecodable record at {r.partition}/{r.offset}: {exc}",
                                   err=True)
                        continue
                    if keep(alert):
                        emit(alert)
                        shown += 1
            if not follow:
                positions = [await consumer.position(tp) for tp in tps]
                if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                    return shown
    finally:
        await consumer.stop()


@alerts.command()
@click.option("--from-beginning", is_flag=True, help="start at the oldest alert instead of new ones only")
@click.option("--severity", type=click.Choice(SEVERITIES, case_sensitive=False), default=None,
              help="minimum severity")
@click.option("--rule", "rules", multiple=True, metavar="RULE_ID", help="only this rule (repeatable), e.g. CF-004")
@click.option("--entity", default=None, help="only alerts about this entity id (or naming it as related)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@click.option("--no-follow", is_flag=True, help="stop at the current end of the topic")
def tail(from_beginning: bool, severity: str | None, rules: tuple[str, ...], entity: str | None,
         as_json: bool, no_follow: bool) -> None:
    """Follow gaming-alerts. Ctrl-C stops."""
    settings = _settings()
    bootstrap = _bootstrap(settings)

    def emit(alert: Mapping[str, Any]) -> None:
        click.echo(json.dumps(alert, sort_keys=True) if as_json else human_line(alert))

    # Ctrl-C is how a reviewer stops following: not an error, no traceback.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_tail(bootstrap, settings.topic(GAMING_ALERTS), from_beginning, not no_follow,
                          lambda a: matches(a, severity, rules, entity), emit))


# ---- lookups -----------------------------------------------------------------------------------

def _check_alert_id(alert_id: str) -> str:
    alert_id = alert_id.strip()
    if not alert_id.startswith(_ALERT_ID_PREFIX) or len(alert_id) < 8 or not alert_id.replace("-", "").isalnum():
        raise click.BadParameter(f"{alert_id!r} is not an alert id (they look like al-<32 hex>)",
                                 param_hint="ALERT_ID")
    return alert_id


def _clickhouse(settings: Any) -> Any:
    """A read-only client: a running worker's live SQL when one holds chDB, else ClickHouse itself."""
    from streams.cli.clickhouse_target import open_target

    return open_target(settings).client


_ALERT_SQL = """
SELECT alert_id, dedup_key, rule_id, rule_name, rule_revision, entity_type, entity_id, related_entities,
       plan, grant_id, toUnixTimestamp64Milli(window_start), toUnixTimestamp64Milli(window_end), severity,
       score, observed, limit_value, counter_signals, evidence, sample_event_ids,
       estimated_credits_exposed_micro, suggested_action, toUnixTimestamp64Milli(first_seen_at),
       toUnixTimestamp64Milli(last_seen_at), firings, status, observed_label, limit_label
FROM gaming_alerts FINAL WHERE alert_id = {id:String}
"""
_ALERT_COLS = ("alert_id", "dedup_key", "rule_id", "rule_name", "rule_revision", "entity_type", "entity_id",
               "related_entities", "plan", "grant_id", "window_start", "window_end", "severity", "score",
               "observed", "limit", "counter_signals", "evidence", "sample_event_ids",
               "estimated_credits_exposed_micro", "suggested_action", "first_seen_at", "last_seen_at",
               "firings", "status", "observed_label", "limit_label")


def _alert_from_clickhouse(client: Any, alert_id: str) -> dict[str, Any] | None:
    rows = client.query(_ALERT_SQL, parameters={"id": alert_id}).result_rows
    if not rows:
        return None
    alert = dict(zip(_ALERT_COLS, rows[0], strict=True))
    with contextlib.suppress(TypeError, ValueError):  # the sink stores evidence as JSON text
        alert["evidence"] = json.loads(alert["evidence"])
    return alert


def _alert_from_topic(settings: Any, alert_id: str) -> dict[str, Any] | None:
    from streams.cli.evaluate import read_topic
    from streams.synthetic.in_process import latest_alerts

    bootstrap = _bootstrap(settings)
    emitted = asyncio.run(read_topic(bootstrap, settings.topic(GAMING_ALERTS), "GamingAlert"))
    found = latest_alerts(a for a in emitted if a["alert_id"] == alert_id)
    return found[0] if found else None


def find_alert(settings: Any, alert_id: str) -> dict[str, Any]:
    """ClickHouse first (the sink's view, through a running worker's live SQL when one holds chDB);
    the topic when ClickHouse cannot be reached or has not landed the alert yet."""
    alert: dict[str, Any] | None = None
    try:
        alert = _alert_from_clickhouse(_clickhouse(settings), alert_id)
    except click.ClickException:
        alert = None
    if alert is None:
        alert = _alert_from_topic(settings, alert_id)
    if alert is None:
        raise click.ClickException(f"alert {alert_id} not found in ClickHouse or on "
                                   f"{settings.topic('gaming-alerts')}")
    return alert


# ---- show --------------------------------------------------------------------------------------

_USAGE_SQL = """
SELECT toUnixTimestamp64Milli(occurred_at), event_id, category, model, outcome, context_window_tokens,
       reasoning_steps, tool_calls, charged_micro, grant_funded_micro
FROM events WHERE account_id IN {accounts:Array(String)}
ORDER BY occurred_at DESC LIMIT {n:UInt32}
"""


@alerts.command()
@click.argument("alert_id")
@click.option("--events", "n_events", type=click.IntRange(min=0, max=1000), default=20, show_default=True,
              help="recent usage rows of the entity to show")
@click.option("--json", "as_json", is_flag=True, help="print the alert and usage as one JSON object")
def show(alert_id: str, n_events: int, as_json: bool) -> None:
    """An alert's evidence and its entity's recent usage (from ClickHouse)."""
    alert_id = _check_alert_id(alert_id)
    settings = _settings()
    client = _clickhouse(settings)
    try:
        alert = _alert_from_clickhouse(client, alert_id)
    except Exception as exc:
        raise click.ClickException(f"cannot read gaming_alerts: {str(exc).splitlines()[0]}") from None
    if alert is None:
        raise click.ClickException(f"alert {alert_id} is not in ClickHouse (yet): try 'alerts tail "
                                   f"--from-beginning --no-follow --json'")
    accounts = [alert["entity_id"]] if alert["entity_type"] == "account" else [
        r.split(":", 1)[1] for r in alert["related_entities"] if r.startswith("account:")]
    usage = client.query(_USAGE_SQL, parameters={"accounts": accounts, "n": n_events}).result_rows
    if as_json:
        click.echo(json.dumps({"alert": alert, "recent_usage": [list(r) for r in usage]}, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{alert['alert_id']}[/bold]  {alert['severity']}  {alert['rule_id']} "
                  f"{alert['rule_name']} (rev {alert['rule_revision']})  {alert['status']} x{alert['firings']}")
    console.print(f"entity {alert['entity_type']}:{alert['entity_id']}  plan {alert['plan'] or '-'}  "
                  f"grant {alert['grant_id'] or '-'}")
    console.print(f"window {_ts(alert['window_start'])} .. {_ts(alert['window_end'])}  first seen "
                  f"{_ts(alert['first_seen_at'])}  last seen {_ts(alert['last_seen_at'])}")
    console.print(f"observed {_observed(alert)} vs limit {_limit(alert)}  score {alert['score']:.2f}  "
                  f"exposed {alert['estimated_credits_exposed_micro'] / 1e6:,.2f} credits")
    if alert["related_entities"]:
        console.print("related: " + ", ".join(alert["related_entities"]))
    if alert["counter_signals"]:
        console.print("counter-signals: " + "; ".join(alert["counter_signals"]))
    console.print(f"evidence: {json.dumps(alert['evidence'], sort_keys=True)}")
    console.print(f"suggested action: {alert['suggested_action']}")
    t = Table(title=f"recent usage ({', '.join(accounts[:5])}{'...' if len(accounts) > 5 else ''})")
    for col in ("at", "event", "category", "model", "outcome", "context", "steps", "tools", "charged",
                "from grants"):
        t.add_column(col)
    for at, eid, cat, model, outcome, ctx, steps, tools, charged, funded in usage:
        t.add_row(_ts(at), eid, cat, model, outcome, str(ctx), str(steps), str(tools),
                  f"{charged / 1e6:.4f}", f"{funded / 1e6:.4f}")
    console.print(t)


# ---- review ------------------------------------------------------------------------------------

def build_decision(alert: Mapping[str, Any], verdict: str, note: str, reviewer: str,
                   allow_days: int | None, now_ms: int) -> dict[str, Any]:
    """The ReviewDecision for ``alert``. Suppression is measured on the detectors' clock, which is
    event time: an allow-list runs from the later of now and the alert's last firing, so it also
    covers a backfill or replay whose events are dated after today."""
    verdict = verdict.upper()
    allow_until = None
    if verdict == "FALSE_POSITIVE" or (verdict == "BENIGN" and allow_days is not None):
        days = 30 if allow_days is None else allow_days
        allow_until = max(now_ms, int(alert["last_seen_at"])) + days * DAY_MS
    return {
        "decision_id": f"rv-{uuid.uuid4().hex}",
        "alert_id": alert["alert_id"],
        "dedup_key": alert.get("dedup_key"),
        "entity_type": alert["entity_type"],
        "entity_id": alert["entity_id"],
        "rule_id": alert["rule_id"],
        "verdict": verdict,
        "reviewer": reviewer,
        "note": note,
        "decided_at": now_ms,
        "allow_until": allow_until,
    }


async def publish_decision(bootstrap: KafkaClients | str, topic: str, decision: Mapping[str, Any]) -> None:
    from streams.wire.codec import encode_single_object

    producer = clients_for(bootstrap).producer(acks="all", enable_idempotence=True)
    try:
        await producer.start()
        # Keyed by the entity id: see the module docstring.
        await producer.send_and_wait(topic, encode_single_object(decision, "ReviewDecision"),
                                     key=str(decision["entity_id"]).encode())
    finally:
        await producer.stop()


@alerts.command()
@click.argument("alert_id")
@click.option("--verdict", type=click.Choice(VERDICTS, case_sensitive=False), required=True)
@click.option("--note", required=True, help="rationale (never quote user content)")
@click.option("--reviewer", default=None, help="reviewer staff id (default: $USER)")
@click.option("--allow-days", type=click.IntRange(min=1, max=3650), default=None,
              help="false_positive/benign: suppress this rule for this entity for N days (default 30 for "
                   "false_positive)")
def review(alert_id: str, verdict: str, note: str, reviewer: str | None, allow_days: int | None) -> None:
    """Record a verdict on an alert: publishes a ReviewDecision to gaming-reviews."""
    import getpass

    alert_id = _check_alert_id(alert_id)
    if not note.strip():
        raise click.BadParameter("must not be empty", param_hint="--note")
    if allow_days is not None and verdict.lower() not in ("false_positive", "benign"):
        raise click.BadParameter("only applies to false_positive or benign", param_hint="--allow-days")
    settings = _settings()
    alert = find_alert(settings, alert_id)
    who = reviewer or getpass.getuser()
    decision = build_decision(alert, verdict, note.strip(), who, allow_days, time.time_ns() // 1_000_000)
    try:
        asyncio.run(publish_decision(_bootstrap(settings), settings.topic(GAMING_REVIEWS), decision))
    except (OSError, TimeoutError) as exc:  # Kafka's own errors are said by the command group
        raise click.ClickException(f"could not publish the decision: {exc}") from None
    click.echo(f"{decision['verdict']} recorded for {alert_id} ({alert['rule_id']} on "
               f"{alert['entity_type']}:{alert['entity_id']}) as {decision['decision_id']}")
