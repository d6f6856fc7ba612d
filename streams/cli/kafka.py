"""``creditflow kafka start|stop|status``: manage the local single-node broker under the data dir."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table

from deploy.kafka.launcher import KafkaLaunchError, LocalKafka
from streams.settings import get_settings


@click.command("kafka")
@click.argument("action", type=click.Choice(["start", "stop", "status"]))
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="seconds to wait for the broker to start or stop")
def kafka(action: str, timeout: float) -> None:
    """Start, stop or inspect the local Kafka broker (KRaft) kept under the data dir."""
    settings = get_settings()
    broker = LocalKafka(settings.data_dir)
    if action == "start" and settings.kafka_bootstrap_servers:
        # Every other command would ignore a local broker while the variable is set.
        click.echo(f"error: KAFKA_BOOTSTRAP_SERVERS is set ({settings.kafka_bootstrap_servers}); "
                   "unset it to use the local broker", err=True)
        sys.exit(1)
    try:
        if action == "start":
            bootstrap = broker.start(timeout=timeout)
            note = "reused running broker" if broker.reused else "started"
            # The address alone goes to stdout so `export KAFKA_BOOTSTRAP_SERVERS=$(... kafka start)` works.
            click.echo(bootstrap)
            click.echo(f"{note}; state in {broker.state_file}", err=True)
        elif action == "stop":
            if broker.stop(timeout=timeout):
                click.echo("stopped")
            else:
                click.echo("no local broker running")
        else:
            _print_status(broker)
    except KafkaLaunchError as exc:
        # One line for the terminal; the broker's own log has the detail (KafkaLaunchError carries
        # its tail, which is what tests and callers of LocalKafka see).
        first_line = str(exc).splitlines()[0].rstrip(":") if str(exc) else type(exc).__name__
        hint = f" (see {broker.log_file})" if broker.log_file.exists() else ""
        click.echo(f"error: {first_line}{hint}", err=True)
        sys.exit(1)


def _print_status(broker: LocalKafka) -> None:
    status = broker.status()
    if status is None:
        click.echo("no local broker recorded under " + str(broker.kafka_dir))
        sys.exit(1)
    table = Table(title="local Kafka broker", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("bootstrap", status.bootstrap)
    table.add_row("pid", str(status.pid))
    table.add_row("alive", "[green]yes[/green]" if status.alive else "[red]no[/red]")
    table.add_row("started at", status.started_at or "-")
    table.add_row("log", status.log_file or "-")
    Console().print(table)
    if not status.alive:
        sys.exit(1)
