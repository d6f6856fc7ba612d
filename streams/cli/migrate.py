"""``creditflow migrate``: apply the numbered ClickHouse migrations and show where the schema is."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from sinks.client import ClickHouseConfigError, ClickHouseUnavailable, connect
from sinks.cluster_ddl import ClusterDDLError, rendered_by_version, session_settings
from sinks.migrations import MigrationError, apply_migrations, discover, migrations_table_ddl, status
from streams.settings import Settings, get_settings


def _print_ddl(settings: Settings, versions: set[int] | None) -> None:
    """The statements of the given migrations (every one when None) as this deployment runs them."""
    cluster = settings.clickhouse_cluster
    rendered = rendered_by_version(discover(), settings.events_ttl_days, cluster)
    where = f"cluster {cluster}" if cluster else "a single node"
    click.echo(f"-- DDL for {where}")
    if versions is None:
        for stmt in migrations_table_ddl(cluster):
            click.echo(f"{stmt};\n")
    for m in discover():
        if versions is None or m.version in versions:
            click.echo(f"-- {m.id}")
            for stmt in rendered[m.version]:
                click.echo(f"{stmt};\n")


@click.command("migrate")
@click.option("--dry-run", is_flag=True,
              help="apply nothing: show applied and pending migrations and print the DDL the pending ones "
              "would run (every migration's when ClickHouse cannot be reached)")
def migrate(dry_run: bool) -> None:
    """Apply pending ClickHouse migrations (schemas/clickhouse/NNNN_name.sql), in order. With
    CLICKHOUSE_CLUSTER set they are rendered for the cluster: Replicated tables ON CLUSTER with
    Distributed tables in front (see docs/operations.md)."""
    settings = get_settings()
    cluster = settings.clickhouse_cluster
    url = settings.resolved_clickhouse_url
    if cluster and url.startswith("chdb://"):
        raise click.ClickException("CLICKHOUSE_CLUSTER needs a ClickHouse server: set CLICKHOUSE_URL to "
                                   "http(s)://user:password@host:8123/db of one of its nodes")
    try:
        client = connect(url, **session_settings(cluster))
        applied_now = [] if dry_run else apply_migrations(client, settings.events_ttl_days, cluster=cluster)
        rows = status(client, cluster=cluster)
    except ClickHouseUnavailable as exc:
        if not dry_run:
            raise click.ClickException(str(exc)) from None
        click.echo(f"ClickHouse not reachable ({exc}); the DDL of every migration follows.", err=True)
        _print_ddl(settings, None)
        return
    except (MigrationError, ClickHouseConfigError, ClusterDDLError) as exc:
        raise click.ClickException(str(exc)) from None
    table = Table(title="ClickHouse migrations" + (f" (cluster {cluster})" if cluster else ""))
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
    if dry_run:
        todo = {m.version for m, rec in rows if rec is None}
        if todo:
            _print_ddl(settings, todo)
        else:
            click.echo("-- nothing pending")
