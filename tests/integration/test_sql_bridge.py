"""The live SQL bridge in process, on the real ClickHouse engine (chDB): what ClickHouse clients see,
what it refuses, its limits and its password rule. (tests/integration/test_live_sql.py runs it
inside a real worker while events flow.)"""

from __future__ import annotations

import asyncio
import base64
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from aiohttp import web

from sinks.client import connect
from sinks.sql_bridge import Access, Limits, ReadOnlySession, SqlBridge

pytestmark = pytest.mark.integration

LIMITS = Limits(max_execution_seconds=2, max_result_rows=5_000, max_result_bytes=200_000,
                max_memory_bytes=1024**3)


class Served:
    """An aiohttp server running one SqlBridge on a loopback port, in a thread of its own."""

    def __init__(self, bridge: SqlBridge) -> None:
        self.bridge = bridge
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        self.url = ""
        started = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self.thread.start()
        assert started.wait(30), "bridge server did not start"

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_get("/ping", self.bridge.ping)
        app.router.add_get("/", self.bridge.handle)
        app.router.add_post("/", self.bridge.handle)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        started.set()
        self.loop.run_forever()

    def stop(self) -> None:
        assert self.runner is not None
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[Any, ReadOnlySession, ThreadPoolExecutor]]:
    """The writing client (as the sink holds it), a read-only session on the same engine and the
    one thread both run on."""
    path = tmp_path / "clickhouse"
    writer = connect(f"chdb://{path}")
    writer.command("CREATE TABLE t (a UInt32, s String) ENGINE = MergeTree ORDER BY a")
    writer.insert("t", [[i, f"row{i}"] for i in range(100)], column_names=["a", "s"])
    thread = ThreadPoolExecutor(max_workers=1)
    session = ReadOnlySession(str(path), LIMITS)
    yield writer, session, thread
    thread.submit(session.close).result(30)
    thread.shutdown(wait=True)


def _bridge(engine: tuple[Any, ReadOnlySession, ThreadPoolExecutor], access: Access) -> SqlBridge:
    _writer, session, thread = engine

    async def on_engine_thread(fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(thread, fn)

    return SqlBridge(session, on_engine_thread, access, max_in_flight=4)


@pytest.fixture
def served(engine: tuple[Any, ReadOnlySession, ThreadPoolExecutor]) -> Iterator[Served]:
    server = Served(_bridge(engine, Access("default", None, loopback=True)))
    yield server
    server.stop()


def _get(url: str, sql: str | None = None, headers: dict[str, str] | None = None,
         **params: str) -> tuple[int, bytes, dict[str, str]]:
    query = dict(params)
    if sql is not None:
        query["query"] = sql
    request = urllib.request.Request(f"{url}/?{urllib.parse.urlencode(query)}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_clickhouse_connect_http_client_reads_through_the_bridge(served: Served) -> None:
    host, port = served.url.removeprefix("http://").split(":")
    client = clickhouse_connect.get_client(host=host, port=int(port), interface="http",
                                           autogenerate_session_id=False)
    result = client.query("SELECT a, s FROM t WHERE a >= {lo:UInt32} ORDER BY a LIMIT 3", parameters={"lo": 97})
    assert result.column_names == ("a", "s")
    assert result.result_rows == [(97, "row97"), (98, "row98"), (99, "row99")]
    assert client.command("SELECT count() FROM t") == 100
    assert client.query("SELECT a FROM t WHERE a > 1000").result_rows == []
    frame = client.query_df("SELECT toDecimal128(1.5, 6) AS d, today() AS day, [1, 2] AS arr") \
        if _has_pandas() else None
    if frame is not None:
        assert str(frame["d"][0]) == "1.500000"
    raw = client.raw_query("SELECT a FROM t ORDER BY a LIMIT 2", fmt="CSVWithNames")
    assert raw == b'"a"\n0\n1\n'


def _has_pandas() -> bool:
    try:
        import pandas  # noqa: F401
    except ImportError:
        return False
    return True


def test_ping_formats_parameters_and_post_bodies(served: Served) -> None:
    with urllib.request.urlopen(f"{served.url}/ping", timeout=30) as response:
        assert response.read() == b"Ok.\n"
    status, body, headers = _get(served.url, "SELECT count() FROM t")
    assert (status, body) == (200, b"100\n")
    assert headers["X-ClickHouse-Format"] == "TabSeparated"
    status, body, _ = _get(served.url, "SELECT {name:String} AS n, {xs:Array(UInt8)} AS xs",
                           default_format="JSONEachRow", param_name="it's", param_xs="[1,2]")
    assert (status, body) == (200, b'{"n":"it\'s","xs":[1,2]}\n')
    request = urllib.request.Request(f"{served.url}/?default_format=CSV", data=b"SELECT a FROM t ORDER BY a LIMIT 2",
                                     method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.read() == b"0\n1\n"
    status, body, _ = _get(served.url, "SELECT 1 AS one FORMAT JSONCompact")
    assert status == 200 and b'"data":' in body
    # Statements span lines, tabs and backslashes; ?query= and the body join into one statement.
    request = urllib.request.Request(f"{served.url}/?query=SELECT+count()", method="POST",
                                     data=b"FROM t\r\n\tWHERE s != 'a\\tb' -- note\n")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.read() == b"100\n"
    status, body, _ = _get(served.url, "SELECT {n:UInt8}", param_n="1); SELECT 2")
    assert status == 400 and b"BAD_QUERY_PARAMETER" in body
    # A syntax error reads as ClickHouse's own, about the caller's statement.
    status, body, headers = _get(served.url, "SELECT a FROM")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (400, "62"), body
    assert b"Syntax error" in body and b"formatQuerySingleLine" not in body, body


ESCAPES = [
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "SELECT * FROM FiLe /* x */ ('/etc/passwd', 'LineAsString')",
    "SELECT * FROM `file`('/etc/passwd', 'LineAsString')",
    "SELECT file('/etc/passwd')",
    "SELECT * FROM url('http://127.0.0.1:9/', 'CSV', 'a String')",
    "SELECT * FROM s3('http://127.0.0.1:9/b/k', 'CSV', 'a String')",
    "SELECT * FROM remote('127.0.0.1:9', system.one)",
    "SELECT * FROM mysql('127.0.0.1:9', 'd', 't', 'u', 'p')",
    "SELECT * FROM postgresql('127.0.0.1:9', 'd', 't', 'u', 'p')",
    "SELECT * FROM executable('cat /etc/passwd', 'TSV', 'a String')",
    "SELECT 1 SETTINGS readonly = 0",
    # ClickHouse reads x$y$ as one name: nothing up to the next $y$ may hide from the guard.
    "SELECT 1 AS x$y$; SELECT file('/etc/passwd') -- $y$",
    "SELECT 1 AS x$y$, file('/etc/passwd') AS z$y$",
    # Table functions are allowed by name (numbers, view, ...); these are not on the list.
    "SELECT * FROM python(t)",
    "SELECT * FROM arrowstream(t)",
    "SELECT * FROM bigquery('project', 'dataset', 'table')",
    "SELECT * FROM eval('SELECT 1')",
    "SELECT * FROM format(LineAsString, 'x')",
    "INSERT INTO t VALUES (1000, 'x')",
    "DROP TABLE t",
]


@pytest.mark.parametrize("sql", ESCAPES)
def test_the_bridge_refuses_ways_out(served: Served, sql: str) -> None:
    status, body, headers = _get(served.url, sql)
    assert status == 403, body
    assert headers["X-ClickHouse-Exception-Code"] == "164"
    assert b"root:" not in body


def test_into_outfile_writes_nothing(served: Served, tmp_path: Path) -> None:
    target = tmp_path / "out.tsv"
    status, _, _ = _get(served.url, f"SELECT * FROM t INTO OUTFILE '{target}'")
    assert status == 403 and not target.exists()
    # The same clause behind a name with dollar signs, which a naive lexer reads as a heredoc.
    status, body, _ = _get(served.url, f"SELECT 'planted' AS x$y$ INTO OUTFILE '{target}' FORMAT TSV -- $y$")
    assert status == 403 and not target.exists(), body


def test_introspection_of_the_worker_process_is_off(served: Served) -> None:
    # chDB turns introspection functions on; they read the process' binaries and thread stacks.
    for sql in ("SELECT addressToLine(toUInt64(1))",
                "SELECT addressToSymbol(arrayJoin(trace)) FROM system.stack_trace"):
        status, body, headers = _get(served.url, sql)
        assert status == 403 and headers["X-ClickHouse-Exception-Code"] == "446", body
        assert b".so" not in body


def test_a_second_statement_never_runs(served: Served, tmp_path: Path) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text("CANARY-7f3a\n")
    for sql in (f"SELECT 1 AS x$y$; SELECT file('{canary}') -- $y$",
                f"SELECT 1 AS x$y$; SELECT * FROM numbers(1) AS z$y$; SELECT file('{canary}')"):
        status, body, _ = _get(served.url, sql)
        assert status in (400, 403) and b"CANARY" not in body, body
    # What is admitted is what the engine runs: one statement, in ClickHouse's own spelling.
    status, body, _ = _get(served.url, "select a as x$y$ from t order by a limit 2 -- $y$")
    assert (status, body) == (200, b"0\n1\n")


def test_settings_from_the_url_are_refused_and_the_writer_still_writes(
        served: Served, engine: tuple[Any, ReadOnlySession, ThreadPoolExecutor]) -> None:
    status, body, _ = _get(served.url, "SELECT count() FROM t", readonly="0")
    assert status == 403 and b"readonly" in body
    status, body, _ = _get(served.url, "SELECT count() FROM t", max_result_rows="0")
    assert status == 403
    writer, _session, thread = engine
    # The read-only session never leaks onto the writer's: it inserts as before.
    thread.submit(writer.insert, "t", [[500, "late"]], column_names=["a", "s"]).result(30)
    assert _get(served.url, "SELECT count() FROM t")[1] == b"101\n"


def test_result_size_and_time_are_capped(served: Served) -> None:
    status, body, _ = _get(served.url, "SELECT number FROM numbers(100000)")
    assert status == 413 and b"TOO_MANY_ROWS_OR_BYTES" in body
    # ClickHouse counts max_result_rows per SELECT of a UNION; the bridge caps the bytes it returns.
    union = " UNION ALL ".join(["SELECT repeat('x', 100) FROM numbers(1400)"] * 3)
    status, body, _ = _get(served.url, union)
    assert status == 413 and b"TOO_MANY_ROWS_OR_BYTES" in body
    status, body, _ = _get(served.url, "SELECT count() FROM numbers(100000000000)")
    assert status == 504 and b"TIMEOUT_EXCEEDED" in body


def test_beyond_loopback_a_password_is_required(engine: tuple[Any, ReadOnlySession, ThreadPoolExecutor]) -> None:
    open_server = Served(_bridge(engine, Access("default", None, loopback=False)))
    try:
        status, body, _ = _get(open_server.url, "SELECT 1")
        assert status == 401 and b"CREDITFLOW_SQL_PASSWORD" in body
        status, _, _ = _get(open_server.url, "SELECT 1", user="default", password="")
        assert status == 401
    finally:
        open_server.stop()
    locked = Served(_bridge(engine, Access("analyst", "s3cret", loopback=False)))
    try:
        assert _get(locked.url, "SELECT 1")[0] == 401
        assert _get(locked.url, "SELECT 1", user="analyst", password="wrong")[0] == 401
        assert _get(locked.url, "SELECT 1", user="analyst", password="s3cret")[:2] == (200, b"1\n")
        basic = base64.b64encode(b"analyst:s3cret").decode()
        assert _get(locked.url, "SELECT 1", headers={"Authorization": f"Basic {basic}"})[:2] == (200, b"1\n")
        assert _get(locked.url, "SELECT 1", headers={"X-ClickHouse-User": "analyst",
                                                      "X-ClickHouse-Key": "s3cret"})[:2] == (200, b"1\n")
        host, port = locked.url.removeprefix("http://").split(":")
        client = clickhouse_connect.get_client(host=host, port=int(port), username="analyst", password="s3cret",
                                               autogenerate_session_id=False)
        assert client.command("SELECT count() FROM t") == 100
    finally:
        locked.stop()


def test_queries_handed_to_the_sinks_thread_are_capped(
        engine: tuple[Any, ReadOnlySession, ThreadPoolExecutor]) -> None:
    """Queries share the sink's one ClickHouse thread with its inserts: a flood of slow ones would
    hold the inserts back for minutes. At most max_in_flight are handed to the thread at once; the
    rest wait their turn for as long as a query may run (LIMITS: 2 s), then are turned away."""
    _writer, session, thread = engine
    handed: list[int] = []
    waiting = 0

    async def on_engine_thread(fn: Callable[[], Any]) -> Any:
        nonlocal waiting
        waiting += 1
        handed.append(waiting)
        try:
            return await asyncio.get_running_loop().run_in_executor(thread, fn)
        finally:
            waiting -= 1

    server = Served(SqlBridge(session, on_engine_thread, Access("default", None, loopback=True), 2))
    slow = "SELECT sum(sleepEachRow(0.3)) FROM numbers(4)"  # one block: 1.2 s
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda _: _get(server.url, slow), range(8)))
        statuses = sorted(status for status, _, _ in answers)
        assert max(handed) == 2, handed
        # 8 x 1.2 s cannot all start within 2 s of waiting: the first ones ran, the last were turned away.
        assert statuses.count(200) >= 2 and 503 in statuses, statuses
        turned_away = [body for status, body, _ in answers if status == 503]
        assert all(b"TOO_MANY_SIMULTANEOUS_QUERIES" in body for body in turned_away), turned_away
        assert _get(server.url, "SELECT count() FROM t")[:2] == (200, b"100\n")
    finally:
        server.stop()


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{url}/", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_compressed_bodies_are_read_and_broken_ones_are_a_clear_400(served: Served) -> None:
    import gzip
    import zlib

    sql = b"SELECT count() FROM t"
    assert _post(served.url, gzip.compress(sql), {"Content-Encoding": "gzip"}) == (200, b"100\n")
    assert _post(served.url, zlib.compress(sql), {"Content-Encoding": "deflate"}) == (200, b"100\n")
    status, body = _post(served.url, b"not gzip at all", {"Content-Encoding": "gzip"})
    assert status == 400 and b"Traceback" not in body and b"ompress" in body, body


def test_without_a_password_only_loopback_names_may_ask(served: Served) -> None:
    """DNS rebinding: a web page on evil.example resolving its name to 127.0.0.1 makes the browser
    send the bridge's own loopback requests with Host: evil.example. Without a password, only
    loopback names are answered."""
    port = served.url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        assert _get(served.url, "SELECT 1", headers={"Host": host})[:2] == (200, b"1\n"), host
    for host in (f"evil.example:{port}", "evil.example", f"192.0.2.7:{port}"):
        status, body, _ = _get(served.url, "SELECT 1", headers={"Host": host})
        assert status == 403 and b"Host" in body, (host, status, body)
