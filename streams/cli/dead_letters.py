"""``creditflow dead-letters list|replay``: inspect dead letters and re-submit them after a fix.

Dead letters are read from the ``dead-letters`` topic (everything within its retention, whether or
not a sink is running); which were replayed, from the ``dead-letter-replays`` topic. A replay is
exactly once per dead letter across runs (``streams/runtime/dead_letter_replay.py``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from streams.runtime.dead_letter_replay import (
    DeadLetterFilter,
    ReplayFenced,
    ensure_ledger,
    read_dead_letters,
    read_replayed,
    replay,
    to_replay,
)
from streams.runtime.kafka_clients import KafkaClients
from streams.runtime.topics import DEAD_LETTER_REPLAYS, DEAD_LETTERS
from streams.settings import Settings, get_settings
from streams.wire.codec import ErrorKind
from streams.wire.models import DeadLetter

_AGO = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(value: str, now_ms: int) -> int:
    """Epoch ms of an ISO 8601 time (UTC unless it says otherwise) or of a span ago ("30m", "2h", "7d")."""
    m = _AGO.match(value.strip())
    if m:
        return now_ms - int(m[1]) * _UNIT_S[m[2]] * 1000
    try:
        t = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither an ISO 8601 time nor a span like 30m, 2h, 7d") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def _filters(f: click.decorators.FC) -> click.decorators.FC:
    for option in reversed((
        click.option("--kind", "kinds", multiple=True, type=click.Choice([k.value for k in ErrorKind]),
                     help="error kind (repeatable)"),
        click.option("--topic", "topics", multiple=True,
                     help="source topic, by its name with or without the configured prefix (repeatable)"),
        click.option("--since", default=None, help="failed at or after: ISO 8601 time or a span ago (2h, 7d)"),
        click.option("--until", default=None, help="failed before: ISO 8601 time or a span ago"),
    )):
        f = option(f)
    return f


def _build_filter(settings: Settings, kinds: tuple[str, ...], topics: tuple[str, ...], since: str | None,
                  until: str | None, now_ms: int) -> DeadLetterFilter:
    full = {t if t.startswith(settings.topic_prefix) and settings.topic_prefix else settings.topic(t) for t in topics}
    return DeadLetterFilter(
        kinds=frozenset(kinds), topics=frozenset(full | set(topics)),
        since_ms=parse_time(since, now_ms) if since else None, until_ms=parse_time(until, now_ms) if until else None,
    )


def _bootstrap(settings: Settings) -> KafkaClients:
    """The configured cluster with its security settings, else the local broker under the data dir."""
    if settings.kafka_bootstrap_servers:
        return KafkaClients(settings)
    from streams.runtime.topics import resolve_bootstrap

    try:
        return KafkaClients(settings, resolve_bootstrap(settings)[0])
    except Exception as exc:
        raise click.ClickException(f"no Kafka: {exc}") from None


T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T], bootstrap: KafkaClients) -> T:
    # Kafka's own errors (credentials, TLS, unreachable) are said by the command group, as everywhere.
    try:
        return asyncio.run(coro)
    except ReplayFenced as exc:
        raise click.ClickException(str(exc)) from None
    except (OSError, TimeoutError) as exc:
        raise click.ClickException(f"Kafka at {bootstrap}: {exc}") from None


@click.group("dead-letters")
def dead_letters() -> None:
    """List dead letters, or replay them to their source topic after a fix."""


@dead_letters.command("list")
@_filters
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line instead of a table")
def list_(kinds: tuple[str, ...], topics: tuple[str, ...], since: str | None, until: str | None, limit: int,
          as_json: bool) -> None:
    """Dead letters matching the filters, newest last, with whether each was replayed."""
    settings = get_settings()
    now_ms = time.time_ns() // 1_000_000
    wanted = _build_filter(settings, kinds, topics, since, until, now_ms)
    bootstrap = _bootstrap(settings)

    async def read() -> tuple[list[DeadLetter], dict[str, dict[str, Any]]]:
        dead = await read_dead_letters(bootstrap, settings.topic(DEAD_LETTERS))
        return dead, await read_replayed(bootstrap, settings.topic(DEAD_LETTER_REPLAYS))

    dead, replayed = _run(read(), bootstrap)
    shown = [dl for dl in dead if wanted.matches(dl)][-limit:]
    if as_json:
        for dl in shown:
            click.echo(json.dumps({
                "dead_letter_id": dl["dead_letter_id"], "source_topic": dl["source_topic"],
                "source_partition": dl["source_partition"], "source_offset": dl["source_offset"],
                "error_kind": dl["error_kind"], "message": dl["message"], "failed_at": dl["failed_at"],
                "bytes": len(dl["original"]), "replayed": dl["dead_letter_id"] in replayed,
            }))
        return
    table = Table("failed at (UTC)", "source", "kind", "message", "replayed")
    for dl in shown:
        failed = dt.datetime.fromtimestamp(dl["failed_at"] / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(failed, f"{dl['source_topic']}:{dl['source_partition']}:{dl['source_offset']}",
                      dl["error_kind"], dl["message"][:80], "yes" if dl["dead_letter_id"] in replayed else "")
    Console().print(table)
    click.echo(f"{len(shown)} of {sum(1 for dl in dead if wanted.matches(dl))} matching dead letters", err=True)


@dead_letters.command("replay")
@_filters
@click.option("--dry-run", is_flag=True, help="say what would be replayed, send nothing")
def replay_(kinds: tuple[str, ...], topics: tuple[str, ...], since: str | None, until: str | None,
            dry_run: bool) -> None:
    """Re-submit the original bytes and headers of matching dead letters to their source topic, once
    each: dead letters replayed before (by any run) are skipped."""
    settings = get_settings()
    now_ms = time.time_ns() // 1_000_000
    wanted = _build_filter(settings, kinds, topics, since, until, now_ms)
    bootstrap = _bootstrap(settings)
    ledger = settings.topic(DEAD_LETTER_REPLAYS)

    async def run() -> tuple[int, list[str]]:
        await ensure_ledger(bootstrap, ledger, 1, settings.replication_factor)
        if not dry_run:
            return await replay(bootstrap, settings.topic(DEAD_LETTERS), ledger,
                                f"{settings.app_id}-dead-letter-replay", wanted, now_ms)
        dead = await read_dead_letters(bootstrap, settings.topic(DEAD_LETTERS))
        replayed = await read_replayed(bootstrap, ledger)
        todo = to_replay(dead, replayed, wanted)
        already = sum(1 for dl in dead if wanted.matches(dl) and dl["dead_letter_id"] in replayed)
        return already, [dl["dead_letter_id"] for dl in todo]

    already, done = _run(run(), bootstrap)
    verb = "would replay" if dry_run else "replayed"
    click.echo(f"{verb} {len(done)} dead letter(s); {already} matching were replayed before")
