"""``creditflow schemas check|list``: the schema catalogue and its evolution rule, from the shell."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from schemas.catalogue import CatalogueError, build_version, check_compatible, get_catalogue


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@click.group("schemas")
def schemas() -> None:
    """Inspect the Avro schema catalogue and check candidate schemas against it."""


@schemas.command("check")
@click.argument("candidate", type=click.Path(dir_okay=False, path_type=Path))
def check(candidate: Path) -> None:
    """Check that CANDIDATE.avsc can read everything the latest catalogue version wrote."""
    try:
        schema_json: Any = json.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read {candidate}: {getattr(exc, 'strerror', None) or exc}")
    except ValueError as exc:
        _fail(f"{candidate} is not JSON: {exc}")
    try:
        # Version number is irrelevant here; building validates the schema with fastavro.
        sv = build_version(schema_json, 0, source=str(candidate))
    except CatalogueError as exc:
        _fail(str(exc).splitlines()[0])
    try:
        latest = get_catalogue().latest(sv.name)
    except KeyError:
        click.echo(f"OK: {sv.fullname} is a new record (no catalogue version to be compatible with)")
        return
    if sv.fingerprint == latest.fingerprint:
        click.echo(f"OK: {candidate} is identical (canonically) to {latest.name} v{latest.version}")
        return
    reasons = check_compatible(schema_json, latest.schema_json)
    if reasons:
        click.echo(
            f"INCOMPATIBLE: {candidate} cannot read data written with {latest.name} v{latest.version}:"
        )
        for reason in reasons:
            click.echo(f"  - {reason}")
        sys.exit(1)
    click.echo(f"OK: {candidate} is backward compatible with {latest.name} v{latest.version}")


@schemas.command("list")
def list_() -> None:
    """List every record in the catalogue with its versions and fingerprints."""
    cat = get_catalogue()
    table = Table(title="Avro schema catalogue (io.creditflow)")
    table.add_column("record")
    table.add_column("versions", justify="right")
    table.add_column("fingerprint (CRC-64-AVRO, as on the wire)")
    for name in cat.names():
        svs = cat.versions(name)
        table.add_row(name, str(len(svs)), "\n".join(f"v{s.version}  {s.fingerprint_hex}" for s in svs))
    Console().print(table)
