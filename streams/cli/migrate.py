"""``creditflow migrate``: apply the numbered ClickHouse migrations and show where the schema is."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from sinks.client import ClickHouseConfigError, ClickHouseUnavailable, connect
from sinks.migrations import MigrationError, apply_migrations, status
from streams.settings import get_settings


@click.command("migrate")
@click.option("--dry-run", is_flag=True, help="only show applied and pending migrations")
def migrate(dry_run: bool) -> None:
    """Apply pending ClickHouse migrations (schemas/clickhouse/NNNN_name.sql), in order."""
    settings = get_settings()
    try:
        client = connect(settings.resolved_clickhouse_url)
        applied_now = [] if dry_run else apply_migrations(client, settings.events_ttl_days)
        rows = status(client)
    except (MigrationError, ClickHouseUnavailable, ClickHouseConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    table = Table(title="ClickHouse migrations")
    for col in ("version", "name", "status", "applied at (UTC)", "checksum"):
        table.add_column(col)
    for m, rec in rows:
        if m.id in applied_now:
            state = "[green]applied now[/green]"
        elif rec is not None:
            state = "applied"
        else:
            state = "[yellow]pending[/yellow]"
        when = rec.applied_at.strftime("%Y-%m-%d %H:%M:%S") if rec is not None else ""
        table.add_row(f"{m.version:04d}", m.name, state, when, m.checksum[:12])
    Console().print(table)
