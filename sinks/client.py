"""One way to get a clickhouse-connect client, for chDB and for a ClickHouse server.

``connect("chdb:///abs/path")`` opens the embedded engine through clickhouse-connect's chdb
backend; ``connect("http(s)://user:pass@host:8123/db")`` talks to a server. Callers get the same
``Client`` API either way.

chDB hosts one engine per process, on one data path, and two processes cannot share a path. So
chDB clients are cached per resolved path: every ``connect`` for that path in this process returns
the same client, and asking for a second path while one is open is a configuration error.

Thread-safety. The chdb backend serialises every call on a client with a lock, so the cached
client may be used from any thread, one call at a time; calls block. In an asyncio program, run
them off the loop (``await asyncio.to_thread(client.insert, ...)``): the lock keeps concurrent
``to_thread`` calls correct, they just queue. Do not hold a streaming query open on one thread
while issuing another call on the same thread: the backend refuses it. HTTP clients are created
fresh per ``connect`` call with no session id, so they are safe to share across threads too
(clickhouse-connect pools connections underneath).
"""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import unquote, urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError, ProgrammingError

from streams.settings import redact_url

__all__ = [
    "ClickHouseConfigError",
    "ClickHouseUnavailable",
    "Client",
    "close",
    "close_all",
    "connect",
    "is_unavailable",
]


class ClickHouseConfigError(ValueError):
    """The ClickHouse URL is malformed or cannot be honoured (e.g. a second chDB path). Retrying
    will not help."""


class ClickHouseUnavailable(ConnectionError):
    """ClickHouse cannot be reached or opened right now. Transient: the sink retries on it."""


_lock = threading.Lock()
_chdb_clients: dict[str, Client] = {}


def _chdb_path(url: str) -> str:
    parsed = urlparse(url)
    if parsed.netloc or not parsed.path.startswith("/"):
        raise ClickHouseConfigError(
            f"chdb URL must be chdb:///absolute/path (three slashes), got {url!r}"
        )
    # chdb compares engine paths literally; realpath makes spellings of one directory one key.
    return os.path.realpath(unquote(parsed.path))


def connect(url: str, **settings: Any) -> Client:
    """A client for ``url``. ``settings`` become session settings (HTTP) or are ignored for a
    cached chDB client that already exists (a shared client must not change under its users)."""
    scheme = urlparse(url).scheme.lower()
    if scheme == "chdb":
        return _connect_chdb(url, settings)
    if scheme in ("http", "https"):
        return _connect_http(url, settings)
    raise ClickHouseConfigError(f"unsupported ClickHouse URL scheme {scheme!r}: use chdb:///path or http(s)://")


def _connect_chdb(url: str, settings: dict[str, Any]) -> Client:
    path = _chdb_path(url)
    with _lock:
        client = _chdb_clients.get(path)
        if client is not None:
            return client
        if _chdb_clients:
            other = next(iter(_chdb_clients))
            raise ClickHouseConfigError(
                f"this process already holds the chDB data path {other}; one process can open only "
                f"one chDB path (asked for {path})"
            )
        try:
            os.makedirs(path, exist_ok=True)
            client = clickhouse_connect.get_client(dsn=f"chdb://{path}", settings=settings or None)
        except ProgrammingError as ex:
            # Raised when chdb refuses the path: another engine already lives in this process.
            raise ClickHouseConfigError(f"cannot open chDB at {path}: {ex}") from ex
        except (OSError, DatabaseError, RuntimeError) as ex:
            raise ClickHouseUnavailable(f"cannot open chDB at {path}: {ex}") from ex
        _chdb_clients[path] = client
        return client


def _connect_http(url: str, settings: dict[str, Any]) -> Client:
    parsed = urlparse(url)
    if not parsed.hostname:
        raise ClickHouseConfigError(f"ClickHouse URL has no host: {url!r}")
    try:
        # No session id: sessions serialise queries server-side and forbid concurrent use.
        return clickhouse_connect.get_client(dsn=url, autogenerate_session_id=False,
                                             settings=settings or None)
    except OperationalError as ex:
        raise ClickHouseUnavailable(f"cannot reach ClickHouse at {_redact(url)}: {ex}") from ex
    except DatabaseError as ex:
        # Authentication and unknown-database errors arrive as DatabaseError during the handshake.
        raise ClickHouseUnavailable(f"ClickHouse at {_redact(url)} refused the connection: {ex}") from ex


_redact = redact_url


def is_unavailable(ex: BaseException) -> bool:
    """True for errors worth retrying: the server went away, timed out or could not be opened.
    A DatabaseError from a bad query is not one of them."""
    return isinstance(ex, ClickHouseUnavailable | OperationalError | ConnectionError | TimeoutError)


def close(url: str) -> None:
    """Close the cached chDB client for ``url`` (no-op for HTTP URLs or unknown paths), releasing
    the engine so this process may open another path."""
    if urlparse(url).scheme.lower() != "chdb":
        return
    path = _chdb_path(url)
    with _lock:
        client = _chdb_clients.pop(path, None)
    if client is not None:
        client.close()


def close_all() -> None:
    with _lock:
        clients = list(_chdb_clients.values())
        _chdb_clients.clear()
    for client in clients:
        client.close()
