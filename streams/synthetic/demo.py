"""``creditflow demo``: the whole pipeline on one machine, end to end, with a summary at the end."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sys
import time
from typing import Any

import faust
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sinks.service import ClickHouseSink
from streams.processor import Processor
from streams.producer import CreditflowProducer
from streams.runtime.pipeline import build, prepare
from streams.settings import Role, Settings
from streams.synthetic.generator import Generator

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


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


async def _produce(settings: Settings, bootstrap: str, gen: Generator, n: int, console: Console,
                   processor: Processor) -> int:
    async with CreditflowProducer(settings, bootstrap_servers=bootstrap) as producer:
        grants = gen.grants()
        for grant in grants:
            await producer.emit_grant(grant)
        await producer.flush()
        # Grants are issued before the traffic they fund; let the processor hold them first, since
        # Kafka orders records within a topic partition, not across the grants and events topics.
        holders = {g["account_id"] for g in grants}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not holders <= processor.grants.keys():
            await asyncio.sleep(0.1)
        with _progress(console) as progress:
            task = progress.add_task("producing events", total=n)
            for i, ev in enumerate(gen.events(n), 1):
                await producer.emit_interaction(ev)
                if i % 1000 == 0:
                    progress.update(task, completed=i)
                    await asyncio.sleep(0)
            await producer.flush()
            progress.update(task, completed=n)
    return len(grants)


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


def _table(title: str, header: list[str], rows: list[tuple[Any, ...]]) -> Table:
    t = Table(title=title)
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*[f"{v:,}" if isinstance(v, int) else str(v) for v in r])
    return t


async def _run(settings: Settings, bootstrap: str, events: int, accounts: int, seed: int, timeout: float,
               console: Console) -> int:
    pipeline = build(settings, bootstrap)
    app = pipeline.app
    run_id = settings.topic_prefix.strip(".-_") or secrets.token_hex(3)
    gen = Generator(accounts=accounts, seed=seed, account_prefix=f"{run_id}-acct")
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
        work = asyncio.ensure_future(_produce_and_report(app, settings, bootstrap, gen, events, run_id, started,
                                                         timeout, console))
        stop = asyncio.ensure_future(interrupted.wait())
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if work.done():
            return work.result()
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work
        return INTERRUPTED
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(app.stop(), _STOP_TIMEOUT_S)


async def _produce_and_report(app: faust.App, settings: Settings, bootstrap: str, gen: Generator, events: int,
                              run_id: str, started: float, timeout: float, console: Console) -> int:
    sink: ClickHouseSink = app.creditflow_sink  # type: ignore[attr-defined]
    processor: Processor = app.creditflow_processor  # type: ignore[attr-defined]
    prefix = f"{run_id}-acct"
    grants = await _produce(settings, bootstrap, gen, events, console, processor)
    landed = await _wait_landed(sink, prefix, events, grants, timeout, console)
    elapsed = time.monotonic() - started
    rows = await sink.query(CREDITS_BY_CATEGORY, {"prefix": prefix})
    console.print(_table("credits by feature category (this run)",
                         ["category", "events", "list", "charged", "subsidy", "from grants",
                          "from subscription"], rows))
    utilisation = await sink.query(GRANT_UTILISATION, {"prefix": prefix})
    console.print(_table("grant utilisation by campaign", ["campaign", "grants", "granted", "used",
                                                           "utilisation"], utilisation))
    ok = landed == events
    style = "green" if ok else "red"
    console.print(f"[{style}]{landed:,} of {events:,} events landed in ClickHouse "
                  f"in {elapsed:.1f}s[/{style}] (run {run_id}, sink batches {sink.stats.batches}, "
                  f"dead letters {sink.stats.rows.get('dead_letters', 0)})")
    return 0 if ok else 1


def run_demo(settings: Settings, *, events: int, accounts: int, seed: int, timeout: float) -> int:
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
        rc = asyncio.run(_run(settings, bootstrap, events, accounts, seed, timeout, console))
    except KeyboardInterrupt:  # outside the event loop (starting the broker)
        rc = INTERRUPTED
    finally:
        if rc == INTERRUPTED:
            console.print("[yellow]interrupted; stopping what the demo started[/yellow]")
        if broker is not None:
            broker.stop()
    return rc
