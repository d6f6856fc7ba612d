"""Live SQL on the embedded engine: a read-only, ClickHouse-compatible HTTP interface served by the
worker that holds chDB.

With chDB exactly one process may open the data path, and that is the sink. So the sink's worker
answers SQL for everyone else on its web server, in ClickHouse's own HTTP dialect: ``GET /ping``,
and ``GET|POST /`` with the statement in ``?query=`` and/or the body, ``default_format`` or a
trailing ``FORMAT``, ``param_<name>`` values bound server-side to ``{name:Type}`` placeholders,
credentials as Basic auth, ``X-ClickHouse-User``/``X-ClickHouse-Key`` or ``user``/``password``. The
answer carries the ``X-ClickHouse-*`` headers clients read. It is a bridge, not a database: every
statement goes to the one engine, on the sink's one ClickHouse thread, queued with its inserts.

The statement is guarded (``sinks.sql_guard``: the engine parses it as a bound value, and its
canonical form is checked again and is what runs) in a session of its own on that
engine, opened with the limits (``max_execution_time``, ``max_result_rows``, ``max_result_bytes``,
``max_memory_usage``) and then ``readonly=1``, which refuses writes, DDL and every later change of
a setting, the limits included. A session of its own, never the sink's: clickhouse-connect applies
per-call settings on chDB with ``SET`` and restores them afterwards, and a restored ``readonly``
sticks, which would stop the sink's inserts. The bridge also caps the bytes it returns, since
ClickHouse checks ``max_result_rows`` per SELECT of a UNION, not for the whole answer.

Beyond loopback a password is required (``CREDITFLOW_SQL_PASSWORD``); without one the bridge
refuses every query there.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import ipaddress
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import faust
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from sinks.sql_guard import CANONICAL_SQL, Admitted, SqlRefused, admit, escaped, vet
from streams.runtime.web import add_route
from streams.settings import Settings

log = logging.getLogger("creditflow.sql")

T = TypeVar("T")
# Runs a blocking function on the thread that owns the engine (the sink's ClickHouse thread).
EngineThread = Callable[[Callable[[], T]], Awaitable[T]]

# Output formats served, by lower-cased name; the value is the name chDB takes.
FORMATS: dict[str, str] = {name.lower(): name for name in (
    "Native", "RowBinary", "RowBinaryWithNames", "RowBinaryWithNamesAndTypes",
    "TabSeparated", "TabSeparatedRaw", "TabSeparatedWithNames", "TabSeparatedWithNamesAndTypes",
    "TSV", "TSVRaw", "TSVWithNames", "TSVWithNamesAndTypes",
    "CSV", "CSVWithNames", "CSVWithNamesAndTypes",
    "JSON", "JSONCompact", "JSONStrings", "JSONEachRow", "JSONCompactEachRow",
    "JSONCompactEachRowWithNamesAndTypes", "JSONStringsEachRow", "JSONObjectEachRow",
    "Pretty", "PrettyCompact", "PrettyCompactMonoBlock", "PrettySpace", "PrettyNoEscapes",
    "Values", "Vertical", "Markdown", "Arrow", "ArrowStream", "Parquet",
)}
_CONTENT_TYPES = {"json": "application/json; charset=UTF-8", "tab": "text/tab-separated-values; charset=UTF-8",
                  "tsv": "text/tab-separated-values; charset=UTF-8", "csv": "text/csv; charset=UTF-8",
                  "pretty": "text/plain; charset=UTF-8", "values": "text/plain; charset=UTF-8",
                  "vertical": "text/plain; charset=UTF-8", "markdown": "text/markdown; charset=UTF-8"}

# URL parameters that shape the HTTP exchange rather than the query; accepted and not applied
# (chDB has no sessions, progress headers or wire compression to switch).
TRANSPORT_PARAMS = frozenset({
    "query", "default_format", "database", "user", "password", "query_id", "session_id", "session_timeout",
    "session_check", "compress", "decompress", "wait_end_of_query", "client_protocol_version",
    "enable_http_compression", "send_progress_in_http_headers", "http_headers_progress_interval_ms",
    "buffer_size", "quota_key", "stacktrace", "cancel_http_readonly_queries_on_client_close",
    "http_zlib_compression_level", "role", "close_session",
})
MAX_QUERY_BYTES = 256 * 1024

_CODE = re.compile(r"Code: (\d+)\.")
# HTTP status by ClickHouse error code, as its own HTTP interface answers: syntax and parameter
# errors, unknown tables and databases, refusals (readonly, introspection), timeouts, limits, memory.
_STATUS = {62: 400, 456: 400, 457: 400, 60: 404, 81: 404, 164: 403, 446: 403, 159: 504, 396: 413, 241: 507}
_NAME = re.compile(r"\(([A-Z_]+)\)\s*$")


# What chDB changes from a ClickHouse server's defaults and a read-only session on it puts back:
# introspection functions, which read the worker's binaries and every thread's stack.
CHDB_READ_ONLY_SETTINGS = {"allow_introspection_functions": "0"}


@dataclass(frozen=True)
class Limits:
    max_execution_seconds: float
    max_result_rows: int
    max_result_bytes: int
    max_memory_bytes: int

    def session_settings(self) -> dict[str, str]:
        return {
            "max_execution_time": f"{self.max_execution_seconds:g}",
            "timeout_overflow_mode": "throw",
            "max_result_rows": str(self.max_result_rows),
            "max_result_bytes": str(self.max_result_bytes),
            "result_overflow_mode": "throw",
            "max_memory_usage": str(self.max_memory_bytes),
            "max_query_size": str(MAX_QUERY_BYTES),
        }

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.sql_max_execution_seconds, settings.sql_max_result_rows,
                   settings.sql_max_result_bytes, settings.sql_max_memory_bytes)


class BridgeError(Exception):
    """An answer in ClickHouse's error shape: HTTP status, exception code and name."""

    def __init__(self, status: int, code: int, name: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.name, self.message = status, code, name, message

    def body(self) -> str:
        return f"Code: {self.code}. DB::Exception: {self.message}. ({self.name})\n"


def refused(exc: SqlRefused) -> BridgeError:
    return BridgeError(403, 164, "READONLY", f"Refused by creditflow's read-only guard: {exc}")


def engine_error(exc: Exception) -> BridgeError:
    text = str(exc).strip()
    code = int(m.group(1)) if (m := _CODE.search(text)) else 1002
    name = m.group(1) if (m := _NAME.search(text)) else "UNKNOWN_EXCEPTION"
    message = text[text.find("DB::Exception:") + len("DB::Exception:"):].strip() if "DB::Exception:" in text else text
    message = _NAME.sub("", message).rstrip(". ")
    status = _STATUS.get(code, 500)
    return BridgeError(status, code, name, message)


@dataclass(frozen=True)
class Answer:
    body: bytes
    fmt: str
    elapsed_s: float
    read_rows: int
    read_bytes: int


class ReadOnlySession:
    """A read-only session on this process' chDB engine. Not thread-safe: call it from the one
    engine thread only."""

    def __init__(self, path: str, limits: Limits) -> None:
        self.path = os.path.realpath(path)
        self.limits = limits
        self._conn: Any = None
        self.timezone = "UTC"

    def _open(self) -> Any:
        if self._conn is None:
            import chdb  # the engine is already loaded in this process by the sink's client

            conn = chdb.connect(self.path)
            try:
                for name, value in {**self.limits.session_settings(), **CHDB_READ_ONLY_SETTINGS}.items():
                    conn.query(f"SET {name} = '{value}'")
                conn.query("SET readonly = 1")
                self.timezone = conn.query("SELECT timezone()", "TabSeparated").bytes().decode().strip() or "UTC"
            except Exception:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def run(self, admitted: Admitted, fmt: str, params: Mapping[str, str]) -> Answer:
        """The statement's answer in ``fmt``; SqlRefused or the engine's error otherwise."""
        conn = self._open()

        def text(sql: str, bound: Mapping[str, str]) -> str:
            return str(conn.query(sql, "TabSeparatedRaw", params=dict(bound)).bytes().decode(errors="replace"))

        # What runs is the engine's own canonical reading of the statement, checked again. The
        # caller's parameters arrive in ClickHouse's escaped form already (as over its HTTP);
        # the statement is escaped here.
        sql = vet(admitted, lambda statement: text(CANONICAL_SQL, {"statement": escaped(statement)}),
                  lambda explained: text(f"EXPLAIN AST {explained}", params))
        t = time.perf_counter()
        result = conn.query(sql, fmt, params=dict(params))
        body = result.bytes() or b""
        if len(body) > self.limits.max_result_bytes:
            raise BridgeError(413, 396, "TOO_MANY_ROWS_OR_BYTES",
                              f"Limit for result exceeded, max bytes: {self.limits.max_result_bytes}, "
                              f"current bytes: {len(body)}")
        return Answer(body, fmt, time.perf_counter() - t, int(result.rows_read()), int(result.bytes_read()))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(host: str) -> str:
    """The name in a Host header, without its port ("[::1]:8123" -> "::1")."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


@dataclass(frozen=True)
class Access:
    """Who may query: the configured user and password, and whether the bridge listens beyond
    loopback (then a password must be configured and given)."""

    user: str
    password: str | None
    loopback: bool

    def check(self, user: str | None, password: str | None, host: str | None = None) -> None:
        if self.password is None:
            if not self.loopback:
                raise BridgeError(401, 516, "AUTHENTICATION_FAILED",
                                  "live SQL listens beyond loopback and no password is configured: set "
                                  "CREDITFLOW_SQL_PASSWORD on the worker")
            # Without a password, loopback is the only lock. A web page whose name its owner points at
            # 127.0.0.1 (DNS rebinding) can make the browser of someone on this machine ask anyway, but
            # the request then names the page's host.
            if host is not None and not is_loopback(host_name(host)):
                raise BridgeError(403, 516, "AUTHENTICATION_FAILED",
                                  f"Host {host!r} is not a loopback name; without a password live SQL answers "
                                  "only requests addressed to localhost, 127.0.0.1 or [::1]")
            return
        ok_user = hmac.compare_digest((user or "default").encode(), self.user.encode())
        ok_password = hmac.compare_digest((password or "").encode(), self.password.encode())
        if not (ok_user and ok_password):
            raise BridgeError(401, 516, "AUTHENTICATION_FAILED",
                              f"{user or 'default'}: Authentication failed: password is incorrect, or there "
                              "is no user with such name")


def credentials(request: web.Request) -> tuple[str | None, str | None]:
    """The caller's user and password, from Basic auth, ClickHouse's headers or the URL."""
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("basic "):
        try:
            basic_user, _, basic_password = base64.b64decode(header[6:].strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None, None
        return basic_user, basic_password
    return (request.headers.get("X-ClickHouse-User") or request.query.get("user"),
            request.headers.get("X-ClickHouse-Key") or request.query.get("password"))


def split_params(query: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(bound parameter values, settings) from the URL's parameters."""
    bound: dict[str, str] = {}
    settings: dict[str, str] = {}
    for key, value in query.items():
        if key.startswith("param_"):
            bound[key[len("param_"):]] = value
        elif key not in TRANSPORT_PARAMS:
            settings[key] = value
    return bound, settings


def pick_format(admitted: Admitted, default_format: str | None) -> str:
    name = admitted.fmt or default_format or "TabSeparated"
    fmt = FORMATS.get(name.lower())
    if fmt is None:
        raise BridgeError(400, 73, "UNKNOWN_FORMAT", f"Unknown or unserved format {name}")
    return fmt


def content_type(fmt: str) -> str:
    low = fmt.lower()
    for prefix, value in _CONTENT_TYPES.items():
        if low.startswith(prefix):
            return value
    return "application/octet-stream"


class SqlBridge:
    def __init__(self, session: ReadOnlySession, engine_thread: EngineThread[Any], access: Access,
                 max_in_flight: int) -> None:
        self.session = session
        self.engine_thread = engine_thread
        self.access = access
        # Queries queue on the sink's one ClickHouse thread, first come first served with its inserts.
        # At most max_in_flight are handed to it at once, so a flood delays an insert by at most that
        # many queries; the others wait here, without holding the thread, for as long as one query
        # may run, and are then turned away.
        self.max_in_flight = max_in_flight
        self.slots = asyncio.Semaphore(max_in_flight)

    async def ping(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="Ok.\n")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query_id = request.query.get("query_id") or str(uuid.uuid4())
        headers = {"X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Server-Display-Name": "creditflow"}
        try:
            self.access.check(*credentials(request), host=request.headers.get("Host"))
            sql = await self._statement(request)
            database = request.query.get("database") or "default"
            if database != "default":
                raise BridgeError(404, 81, "UNKNOWN_DATABASE", f"Database {database} does not exist")
            params, settings = split_params(request.query)
            if settings:
                name = sorted(settings)[0]
                raise BridgeError(403, 164, "READONLY", f"Cannot modify '{name}' setting in readonly mode")
            try:
                admitted = admit(sql)
            except SqlRefused as exc:
                raise refused(exc) from None
            fmt = pick_format(admitted, request.query.get("default_format"))
            try:
                await asyncio.wait_for(self.slots.acquire(), self.session.limits.max_execution_seconds)
            except TimeoutError:
                raise BridgeError(503, 202, "TOO_MANY_SIMULTANEOUS_QUERIES",
                                  f"Too many simultaneous queries. Maximum: {self.max_in_flight}") from None
            try:
                answer = await self.engine_thread(lambda: self.session.run(admitted, fmt, params))
            finally:
                self.slots.release()
        except BridgeError as exc:
            return self._error(exc, headers)
        except SqlRefused as exc:
            return self._error(refused(exc), headers)
        except Exception as exc:
            return self._error(engine_error(exc), headers)
        headers.update({
            "X-ClickHouse-Format": answer.fmt,
            "X-ClickHouse-Timezone": self.session.timezone,
            "X-ClickHouse-Summary": json.dumps({
                "read_rows": str(answer.read_rows), "read_bytes": str(answer.read_bytes),
                "written_rows": "0", "written_bytes": "0", "total_rows_to_read": str(answer.read_rows),
                "result_bytes": str(len(answer.body)),
                "elapsed_ns": str(int(answer.elapsed_s * 1e9))}),
        })
        return _ok(answer, headers)

    async def _statement(self, request: web.Request) -> str:
        parts = [request.query.get("query", "")]
        if request.method == "POST" and request.can_read_body:
            try:  # aiohttp undoes a gzip or deflate Content-Encoding as it reads
                body = await request.content.read(MAX_QUERY_BYTES + 1)
            except (RequestPayloadError, HttpProcessingError):
                encoding = request.headers.get("Content-Encoding", "none")
                raise BridgeError(400, 1002, "UNKNOWN_EXCEPTION",
                                  f"Cannot decompress or read the request body (Content-Encoding: {encoding})",
                                  ) from None
            if len(body) > MAX_QUERY_BYTES:
                raise BridgeError(413, 62, "SYNTAX_ERROR", f"Query is longer than {MAX_QUERY_BYTES} bytes")
            parts.append(body.decode("utf-8", errors="replace"))
        sql = "\n".join(p for p in parts if p)
        if not sql.strip():
            raise BridgeError(400, 62, "SYNTAX_ERROR", "Empty query")
        return sql

    def _error(self, exc: BridgeError, headers: dict[str, str]) -> web.Response:
        if exc.code not in (164, 202, 516):  # refusals and turned-away queries are not worth a log line
            log.info("live SQL error %s: %s", exc.name, exc.message)
        return web.Response(status=exc.status, text=exc.body(),
                            headers={**headers, "X-ClickHouse-Exception-Code": str(exc.code)})


def _ok(answer: Answer, headers: dict[str, str]) -> web.Response:
    response = web.Response(body=answer.body, headers=headers)
    response.content_type = content_type(answer.fmt).split(";")[0]
    if "charset" in content_type(answer.fmt):
        response.charset = "UTF-8"
    return response


def bridge_for(settings: Settings, engine_thread: EngineThread[Any]) -> SqlBridge | None:
    """The bridge for this worker's engine, or None when ClickHouse is a server (query it there)."""
    url = settings.resolved_clickhouse_url
    if not url.startswith("chdb://"):
        return None
    session = ReadOnlySession(url[len("chdb://"):], Limits.from_settings(settings))
    password = settings.sql_password.get_secret_value() if settings.sql_password is not None else None
    access = Access(settings.sql_user, password, is_loopback(settings.web_host))
    return SqlBridge(session, engine_thread, access, settings.sql_max_concurrent_queries)


def serve(app: faust.App, bridge: SqlBridge) -> None:
    add_route(app, "GET", "/ping", bridge.ping)
    add_route(app, "GET", "/", bridge.handle)
    add_route(app, "POST", "/", bridge.handle)


def register_sql_bridge(app: faust.App, settings: Settings, sink: Any) -> SqlBridge | None:
    """Serve live SQL from the sink's worker, on the sink's ClickHouse thread."""

    async def on_sink_thread(fn: Callable[[], Any]) -> Any:
        return await sink.ch(fn)

    bridge = bridge_for(settings, on_sink_thread)
    if bridge is not None:
        serve(app, bridge)
    return bridge
