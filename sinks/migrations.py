"""Numbered ClickHouse migrations: discovery, statement splitting, checksums and the runner.

Migration files live in ``schemas/clickhouse`` as ``NNNN_name.sql`` and are applied in version
order. Each applied file is recorded in ``schema_migrations`` with a checksum of its text as
shipped (before ``{ttl_days}`` substitution, so changing the TTL setting does not look like an
edited migration; a changed TTL needs its own ``ALTER TABLE ... MODIFY TTL`` migration).

ClickHouse DDL is not transactional, so a migration that fails half-way stays unrecorded and is
re-run whole next time: every statement must be idempotent (``IF NOT EXISTS`` / ``OR REPLACE``).
Two processes migrating the same server at the same moment is not guarded against; run the
migrate command once per deployment.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sinks.cluster_ddl import render_cluster, rendered_by_version

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "schemas" / "clickhouse"
MIGRATIONS_TABLE = "schema_migrations"
TTL_PLACEHOLDER = "{ttl_days}"

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_MIGRATIONS_TABLE = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE}
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""


class MigrationError(Exception):
    """A migration cannot be applied, or the recorded history no longer matches the files."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str

    @property
    def id(self) -> str:
        return f"{self.version:04d}_{self.name}"

    @property
    def checksum(self) -> str:
        return checksum(self.sql)

    def statements(self, ttl_days: int) -> list[str]:
        return split_statements(render(self.sql, ttl_days))


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str
    applied_at: Any


def checksum(sql: str) -> str:
    # Line endings are normalised so a checkout with CRLF does not look like an edited file.
    return hashlib.sha256(sql.replace("\r\n", "\n").encode()).hexdigest()


def render(sql: str, ttl_days: int) -> str:
    # Plain replace, not str.format: SQL is full of braces ({name:Type} parameters, maps).
    if not isinstance(ttl_days, int) or isinstance(ttl_days, bool) or ttl_days < 1:
        raise MigrationError(f"ttl_days must be a positive integer, got {ttl_days!r}")
    return sql.replace(TTL_PLACEHOLDER, str(ttl_days))


def split_statements(sql: str) -> list[str]:
    """Split a file into statements on ``;`` at the end of a line.

    A ``;`` inside a quoted string, a quoted identifier or a comment never splits, and neither
    does one followed by more SQL on the same line. Statements that are only comments are dropped.
    """
    statements: list[str] = []
    buf: list[str] = []
    i, n = 0, len(sql)
    quote: str | None = None
    while i < n:
        ch = sql[i]
        if quote is not None:
            buf.append(ch)
            if ch == "\\" and i + 1 < n:
                buf.append(sql[i + 1])
                i += 2
                continue
            if ch == quote:
                if i + 1 < n and sql[i + 1] == quote:  # doubled quote is an escaped quote
                    buf.append(sql[i + 1])
                    i += 2
                    continue
                quote = None
            i += 1
            continue
        if ch in ("'", '"', "`"):
            quote = ch
            buf.append(ch)
            i += 1
            continue
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            buf.append(sql[i:end])
            i = end
            continue
        if sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end < 0 else end + 2
            buf.append(sql[i:end])
            i = end
            continue
        if ch == ";" and _rest_of_line_is_blank(sql, i + 1):
            _flush(buf, statements)
            buf = []
            i += 1
            continue
        buf.append(ch)
        i += 1
    if quote is not None:
        raise MigrationError("unterminated quoted string or identifier")
    _flush(buf, statements)
    return statements


def _rest_of_line_is_blank(sql: str, start: int) -> bool:
    end = sql.find("\n", start)
    rest = sql[start:] if end < 0 else sql[start:end]
    rest = rest.strip()
    return not rest or rest.startswith("--")


def _flush(buf: list[str], out: list[str]) -> None:
    text = "".join(buf).strip()
    if _strip_comments(text).strip():
        out.append(text)


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("--", 1)[0] for line in text.splitlines())


def discover(directory: Path | None = None) -> list[Migration]:
    """All migration files in version order. Misnamed .sql files and duplicate versions are errors
    rather than silently skipped: a skipped migration would go unnoticed until production."""
    directory = directory or MIGRATIONS_DIR
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _FILE_RE.match(path.name)
        if not m:
            raise MigrationError(f"migration file {path.name!r} is not named NNNN_name.sql")
        version = int(m.group(1))
        if version in found:
            raise MigrationError(f"two migrations share version {version:04d}: "
                                 f"{found[version].path.name} and {path.name}")
        found[version] = Migration(version, m.group(2), path, path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def migrations_table_ddl(cluster: str | None = None) -> list[str]:
    if not cluster:
        return [_CREATE_MIGRATIONS_TABLE.strip()]
    return render_cluster([_CREATE_MIGRATIONS_TABLE], cluster, {MIGRATIONS_TABLE})


def ensure_migrations_table(client: Any, cluster: str | None = None) -> None:
    for stmt in migrations_table_ddl(cluster):
        client.command(stmt)


def applied(client: Any, cluster: str | None = None) -> dict[int, AppliedMigration]:
    ensure_migrations_table(client, cluster)
    rows = client.query(
        f"SELECT version, name, checksum, applied_at FROM {MIGRATIONS_TABLE} FINAL ORDER BY version"
    ).result_rows
    return {int(r[0]): AppliedMigration(int(r[0]), r[1], r[2], r[3]) for r in rows}


def verify(migrations: list[Migration], done: dict[int, AppliedMigration]) -> None:
    for m in migrations:
        rec = done.get(m.version)
        if rec is not None and rec.checksum != m.checksum:
            raise MigrationError(
                f"migration {m.id} was edited after it was applied (checksum {rec.checksum[:12]} "
                f"recorded, file is {m.checksum[:12]}); add a new migration instead"
            )


def pending(client: Any, directory: Path | None = None, cluster: str | None = None) -> list[Migration]:
    migrations = discover(directory)
    done = applied(client, cluster)
    verify(migrations, done)
    return [m for m in migrations if m.version not in done]


def apply_migrations(client: Any, ttl_days: int, directory: Path | None = None,
                     cluster: str | None = None) -> list[str]:
    """Apply every pending migration in order; returns the ids applied (empty when up to date).
    With ``cluster`` the statements are rendered for it (``sinks/cluster_ddl.py``); the recorded
    checksum is the file's either way."""
    todo = pending(client, directory, cluster)
    rendered = rendered_by_version(discover(directory), ttl_days, cluster)
    done: list[str] = []
    for m in todo:
        for n, stmt in enumerate(rendered[m.version], start=1):
            try:
                client.command(stmt)
            except Exception as ex:
                first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
                raise MigrationError(f"migration {m.id} statement {n} failed: {first}") from ex
        client.insert(MIGRATIONS_TABLE, [[m.version, m.name, m.checksum]],
                      column_names=["version", "name", "checksum"])
        done.append(m.id)
    return done


def status(client: Any, directory: Path | None = None,
           cluster: str | None = None) -> list[tuple[Migration, AppliedMigration | None]]:
    """Each migration file with its applied record (None when pending); verifies checksums."""
    migrations = discover(directory)
    done = applied(client, cluster)
    verify(migrations, done)
    return [(m, done.get(m.version)) for m in migrations]
