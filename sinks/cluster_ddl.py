"""The single-node migrations, rendered for a ClickHouse cluster (``CLICKHOUSE_CLUSTER``).

One set of migration files serves both deployments; for a cluster each statement is transformed
here, in one place:

- ``CREATE TABLE t (...) ENGINE = XMergeTree(args)`` becomes ``t_local ON CLUSTER c`` with
  ``ENGINE = ReplicatedXMergeTree('/clickhouse/tables/{shard}/{database}/t_local', '{replica}', args)``
  (the macros come from each server's config), and ``t ON CLUSTER c AS t_local ENGINE =
  Distributed(c, currentDatabase(), t_local, key)`` in front of it, under the original name: every
  insert and read of the code, the views and the analysts goes to the Distributed table.
  ``non_replicated_deduplication_window`` becomes ``replicated_deduplication_window``: the
  deduplication of replayed sink batches (``insert_deduplication_token``) works on Replicated tables
  through the replicated window, kept in Keeper for every replica.
- The sharding key is ``cityHash64(account_id)`` where ``account_id`` is in the sorting key (an
  account's rows on one shard), else a hash of the whole sorting key. Either way rows equal in the
  sorting key share a shard, so ReplacingMergeTree still collapses them and ``FINAL`` stays right,
  and a replayed batch is split across shards exactly as before, so each shard drops its own part.
- Materialized views are created ON CLUSTER and read and write the *local* tables: an insert
  forwarded to a shard fires the view there, and the rollup block replicates with its table (a
  replica never re-runs a view on fetched parts), deduplicated by the same token.
- Plain views are created ON CLUSTER over the Distributed tables. ``ALTER TABLE`` of a replicated
  table alters the local table, and for column changes the Distributed table as well.
Any other statement is refused: a new migration shape gets a rule here rather than a silent guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

LOCAL_SUFFIX = "_local"
SHARDING_COLUMN = "account_id"

_IDENT = r"`?(?P<name>[A-Za-z_][A-Za-z0-9_]*)`?"
_CREATE_TABLE = re.compile(rf"^CREATE\s+TABLE\s+(?P<ine>IF\s+NOT\s+EXISTS\s+)?{_IDENT}\s*(?P<rest>.*)$",
                           re.S | re.I)
_CREATE_MV = re.compile(rf"^CREATE\s+MATERIALIZED\s+VIEW\s+(?P<ine>IF\s+NOT\s+EXISTS\s+)?{_IDENT}\s+"
                        r"TO\s+`?(?P<target>[A-Za-z_][A-Za-z0-9_]*)`?\s+(?P<rest>AS\s.*)$", re.S | re.I)
_CREATE_VIEW = re.compile(rf"^(?P<head>CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?){_IDENT}"
                          r"\s+(?P<rest>AS\s.*)$", re.S | re.I)
_ALTER = re.compile(rf"^ALTER\s+TABLE\s+{_IDENT}\s+(?P<rest>.*)$", re.S | re.I)
_DROP = re.compile(rf"^DROP\s+(?P<kind>TABLE|VIEW)\s+(?P<ie>IF\s+EXISTS\s+)?{_IDENT}\s*$", re.S | re.I)
_ENGINE = re.compile(r"ENGINE\s*=\s*(?P<engine>[A-Za-z]*MergeTree)\b(?:\s*\((?P<args>[^()]*)\))?", re.I)
_ORDER_BY = re.compile(r"\bORDER\s+BY\s+(?P<key>\([^()]*\)|[`A-Za-z_][`A-Za-z0-9_]*)", re.I)
_AS_SOURCE = re.compile(r"^AS\s+`?(?P<source>[A-Za-z_][A-Za-z0-9_]*)`?(?=\s)", re.I)
_TABLE_REF = re.compile(r"\b(?P<kw>FROM|JOIN)\s+`?(?P<name>[A-Za-z_][A-Za-z0-9_]*)`?", re.I)
_COLUMN_ACTION = re.compile(r"^(ADD|DROP|MODIFY|RENAME|COMMENT|CLEAR)\s+COLUMN\b", re.I)


class ClusterDDLError(ValueError):
    """A migration statement this module does not know how to render for a cluster."""


def created_tables(statements: Iterable[str]) -> set[str]:
    """Names of the tables (not views) the statements create: the ones that get replicated."""
    found: set[str] = set()
    for stmt in statements:
        m = _CREATE_TABLE.match(_body(stmt))
        if m:
            found.add(m.group("name"))
    return found


def render_cluster(statements: Sequence[str], cluster: str, replicated: Iterable[str]) -> list[str]:
    """Every statement of a migration, for ``cluster``. ``replicated``: every table any migration
    creates (earlier migrations' tables too, so a later ALTER or view finds them)."""
    tables = frozenset(replicated)
    out: list[str] = []
    for stmt in statements:
        out.extend(render_statement(stmt, cluster, tables))
    return out


def render_statement(statement: str, cluster: str, replicated: frozenset[str]) -> list[str]:
    body = _body(statement)
    on = f"ON CLUSTER {_quote_ident(cluster)}"
    if m := _CREATE_TABLE.match(body):
        return _create_table(m, cluster, on, replicated)
    if m := _CREATE_MV.match(body):
        target = m.group("target")
        if target not in replicated:
            raise ClusterDDLError(f"materialized view {m.group('name')} writes to {target}, not a table of the "
                                  "migrations")
        rest = _TABLE_REF.sub(lambda r: _local_ref(r, replicated), m.group("rest"))
        return [f"CREATE MATERIALIZED VIEW {m.group('ine') or ''}{m.group('name')} {on} "
                f"TO {_local(target)} {rest}"]
    if m := _CREATE_VIEW.match(body):
        return [f"{m.group('head')}{m.group('name')} {on} {m.group('rest')}"]
    if m := _ALTER.match(body):
        name, rest = m.group("name"), m.group("rest")
        if name not in replicated:
            raise ClusterDDLError(f"ALTER TABLE {name}: not a table created by the migrations")
        local = f"ALTER TABLE {_local(name)} {on} {rest}"
        if _COLUMN_ACTION.match(rest.strip()):
            return [local, f"ALTER TABLE {name} {on} {rest}"]
        return [local]
    if m := _DROP.match(body):
        name, ie = m.group("name"), m.group("ie") or ""
        if m.group("kind").upper() == "TABLE" and name in replicated:
            return [f"DROP TABLE {ie}{name} {on} SYNC", f"DROP TABLE {ie}{_local(name)} {on} SYNC"]
        return [f"DROP {m.group('kind').upper()} {ie}{name} {on} SYNC"]
    first = body.split(None, 3)[:3]
    raise ClusterDDLError(f"cannot render {' '.join(first)!r} for a cluster: add a rule to sinks/cluster_ddl.py")


def sharding_key(columns: Sequence[str]) -> str:
    if SHARDING_COLUMN in columns:
        return f"cityHash64({SHARDING_COLUMN})"
    return f"cityHash64({', '.join(columns)})"


def sorting_columns(rest: str) -> list[str]:
    m = _ORDER_BY.search(rest)
    if not m:
        raise ClusterDDLError("a replicated table needs an ORDER BY to derive its sharding key")
    key = m.group("key").strip("()")
    return [c.strip() for c in key.split(",") if c.strip()]


def session_settings(cluster: str | None) -> dict[str, Any]:
    """Settings of the sink's and the migrate command's ClickHouse session on a cluster.

    - ``insert_distributed_sync``: an insert into a Distributed table returns only once every shard
      has it, so the sink commits offsets for data that is stored, not queued on one node.
    - ``insert_quorum='auto'``: and a majority of each shard's replicas has it, so a sink that takes
      over partitions after a rebalance reads the recorded plans from any replica.
    """
    if not cluster:
        return {}
    return {"insert_distributed_sync": 1, "insert_quorum": "auto"}


def _create_table(m: re.Match[str], cluster: str, on: str, replicated: frozenset[str]) -> list[str]:
    name, ine, rest = m.group("name"), m.group("ine") or "", m.group("rest")
    local = _local(name)
    source = _AS_SOURCE.match(rest)
    if source:
        src = source.group("source")
        if src not in replicated:
            raise ClusterDDLError(f"table {name} copies {src}, not a table of the migrations")
        rest = f"AS {_local(src)}{rest[source.end():]}"
    engine = _ENGINE.search(rest)
    if engine is None:
        raise ClusterDDLError(f"table {name}: only MergeTree-family engines are replicated")
    family = engine.group("engine")
    if family.lower().startswith("replicated"):
        raise ClusterDDLError(f"table {name}: write the single-node engine; the cluster rendering adds Replicated")
    args = [f"'/clickhouse/tables/{{shard}}/{{database}}/{local}'", "'{replica}'"]
    if engine.group("args") and engine.group("args").strip():
        args.append(engine.group("args").strip())
    rest = f"{rest[:engine.start()]}ENGINE = Replicated{family}({', '.join(args)}){rest[engine.end():]}"
    rest = re.sub(r"\bnon_replicated_deduplication_window\b", "replicated_deduplication_window", rest)
    key = sharding_key(sorting_columns(rest))
    return [
        f"CREATE TABLE {ine}{local} {on} {rest}",
        f"CREATE TABLE {ine}{name} {on} AS {local}\n"
        f"ENGINE = Distributed({_quote(cluster)}, currentDatabase(), {_quote(local)}, {key})",
    ]


def _local(name: str) -> str:
    return f"{name}{LOCAL_SUFFIX}"


def _local_ref(m: re.Match[str], replicated: frozenset[str]) -> str:
    name = m.group("name")
    return f"{m.group('kw')} {_local(name)}" if name in replicated else m.group(0)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _quote_ident(value: str) -> str:
    return value if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value) else "`" + value.replace("`", "``") + "`"


def _body(statement: str) -> str:
    """The statement without its leading comment lines (comments inside it stay)."""
    lines = statement.strip().splitlines()
    while lines and (not lines[0].strip() or lines[0].lstrip().startswith("--")):
        lines.pop(0)
    return "\n".join(lines).strip()


def rendered_by_version(migrations: Sequence[Any], ttl_days: int, cluster: str | None) -> Mapping[int, list[str]]:
    """Statements of every migration (``sinks.migrations.Migration``) as they run on this deployment."""
    if not cluster:
        return {m.version: m.statements(ttl_days) for m in migrations}
    singles = {m.version: m.statements(ttl_days) for m in migrations}
    replicated = created_tables(s for stmts in singles.values() for s in stmts)
    return {v: render_cluster(stmts, cluster, replicated) for v, stmts in singles.items()}
