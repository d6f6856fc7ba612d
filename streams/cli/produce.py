"""``creditflow produce``: synthetic traffic at a rate or count, or events from a JSON Lines file."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import click
from rich.progress import Progress

from streams.producer import CreditflowProducer, DeliveryError, InvalidEventError
from streams.runtime.kafka_clients import KafkaConfigError
from streams.settings import get_settings
from streams.synthetic.generator import Generator


@click.command("produce")
@click.option("--count", "-n", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="synthetic events to send (ignored with --file)")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="events per second (default: as fast as possible)")
@click.option("--accounts", type=click.IntRange(min=1), default=1_000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--grants/--no-grants", default=True, show_default=True, help="send the accounts' grants first")
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="JSON Lines file of interaction events to send instead")
def produce(count: int, rate: float | None, accounts: int, seed: int, grants: bool, file_: Path | None) -> None:
    """Send interaction events (and grants) to Kafka through the producer API."""
    settings = get_settings()
    if not settings.kafka_bootstrap_servers:
        from streams.runtime.topics import resolve_bootstrap

        bootstrap, _ = resolve_bootstrap(settings)
    else:
        bootstrap = settings.kafka_bootstrap_servers
    try:
        sent = asyncio.run(_send(settings, bootstrap, count, rate, accounts, seed, grants, file_))
    except InvalidEventError as exc:
        raise click.ClickException(f"invalid event: {exc}") from None
    except DeliveryError as exc:
        raise click.ClickException(f"delivery failed: {exc}") from None
    except KafkaConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"sent {sent:,} events to {settings.topic('interaction-events')} at {bootstrap}")


async def _send(settings: object, bootstrap: str, count: int, rate: float | None, accounts: int, seed: int,
                grants: bool, file_: Path | None) -> int:
    gen = Generator(accounts=accounts, seed=seed)
    if file_ is not None:
        lines = [ln for ln in file_.read_text("utf-8").splitlines() if ln.strip()]
        try:
            events = [json.loads(ln) for ln in lines]
        except json.JSONDecodeError as exc:
            raise InvalidEventError("DECODE_ERROR", f"{file_}: line is not JSON: {exc}") from None
        count = len(events)
        source = iter(events)
    else:
        source = gen.events(count)
    start = time.monotonic()
    async with CreditflowProducer(settings, bootstrap_servers=bootstrap) as producer:  # type: ignore[arg-type]
        if grants and file_ is None:
            for g in gen.grants():
                await producer.emit_grant(g)
        with Progress() as progress:
            task = progress.add_task("producing", total=count)
            for i, ev in enumerate(source, 1):
                await producer.emit_interaction(ev)
                if rate is not None:
                    ahead = i / rate - (time.monotonic() - start)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                if i % 500 == 0:
                    progress.update(task, completed=i)
            await producer.flush()
            progress.update(task, completed=count)
    return count
