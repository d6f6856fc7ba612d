"""Where the CLI's read-only queries go: a running worker's live SQL, or ClickHouse itself.

With chDB only the process holding the data path can open it. When a worker that holds it (role
``all`` or ``sink``) has announced itself under the data dir, commands query through its live SQL
bridge (``sinks/sql_bridge.py``) with clickhouse-connect's HTTP client; with nothing running they
open chDB themselves, as before. A ClickHouse server URL is always queried directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import quote, urlparse

import click

from sinks.client import ClickHouseConfigError, ClickHouseUnavailable, Client, connect
from sinks.sql_bridge import CHDB_READ_ONLY_SETTINGS, Limits
from streams.runtime.web import running_workers
from streams.settings import Role, Settings

_CHDB_HOLDERS = (Role.ALL.value, Role.SINK.value)


@dataclass(frozen=True)
class Target:
    client: Client
    where: str
    # Per-query settings: readonly and the limits. Empty through the bridge, which applies them
    # itself and accepts no settings from clients.
    settings: dict[str, str]


def bridge_url(settings: Settings) -> str | None:
    """The live SQL address of a running worker holding this data dir's chDB, if there is one."""
    if not settings.resolved_clickhouse_url.startswith("chdb://"):
        return None
    for worker in running_workers(settings.data_dir):
        if worker.role in _CHDB_HOLDERS:
            return worker.url
    return None


def _with_credentials(url: str, settings: Settings) -> str:
    parsed = urlparse(url)
    password = settings.sql_password.get_secret_value() if settings.sql_password is not None else ""
    netloc = f"{quote(settings.sql_user, safe='')}:{quote(password, safe='')}@{parsed.netloc}"
    return parsed._replace(netloc=netloc).geturl()


_REASONS = ("Connection refused", "timed out", "Name or service not known", "Connection reset")


def _reason(exc: Exception) -> str:
    """The gist of a failed connection, not urllib3's retry narrative."""
    text = str(exc).strip()
    found = next((r for r in _REASONS if r in text), None)
    return found.lower() if found else (text.splitlines()[0] if text else type(exc).__name__)


def open_target(settings: Settings) -> Target:
    """A client for read-only queries, or a one-line ClickException saying why there is none."""
    url = bridge_url(settings)
    try:
        if url is not None:
            # urllib3 and clickhouse-connect log each failed attempt as a warning; the one line
            # below says it all.
            for name in ("urllib3", "clickhouse_connect"):
                logging.getLogger(name).setLevel(logging.ERROR)
            try:
                client = connect(_with_credentials(url, settings))
            except ClickHouseUnavailable as exc:
                if "AUTHENTICATION_FAILED" in str(exc):
                    raise
                raise click.ClickException(
                    f"cannot reach the live SQL of the running worker at {url}: {_reason(exc)} "
                    "(is it still starting, or stopping?)") from None
            return Target(client, f"the running worker at {url}", {})
        limits = {"readonly": "1", **Limits.from_settings(settings).session_settings()}
        limits.pop("max_query_size")
        if settings.resolved_clickhouse_url.startswith("chdb://"):
            limits.update(CHDB_READ_ONLY_SETTINGS)
        return Target(connect(settings.resolved_clickhouse_url), "ClickHouse", limits)
    except (ClickHouseUnavailable, ClickHouseConfigError) as exc:
        hint = f" (live SQL of the worker at {url})" if url else ""
        raise click.ClickException(f"cannot open ClickHouse{hint}: {str(exc).strip().splitlines()[0]}") from None
