"""Live SQL while the pipeline runs: a real `creditflow worker` (subprocess) holds chDB and events
flow, and the CLI (`creditflow query`, `creditflow report`), curl and clickhouse-connect's HTTP
client all answer, concurrently, during the sink's inserts."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest

from streams.producer import CreditflowProducer
from streams.runtime.topics import ensure_topics
from streams.runtime.web import running_workers
from streams.settings import Settings
from streams.synthetic.generator import Generator
from tests.integration.harness import REPO, Worker, wait_drained

pytestmark = pytest.mark.integration

EVENTS = 3_000


@pytest.fixture
def settings(topic_settings: Settings, tmp_path: Path) -> Settings:
    return topic_settings.model_copy(update={"clickhouse_url": f"chdb://{tmp_path / 'clickhouse'}",
                                             "sink_flush_seconds": 0.3, "process_batch": 200})


def _cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITFLOW_")}
    env.update({"KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers or "",
                "CLICKHOUSE_URL": settings.resolved_clickhouse_url, "CREDITFLOW_DATA_DIR": str(settings.data_dir),
                "CREDITFLOW_TOPIC_PREFIX": settings.topic_prefix, "CREDITFLOW_APP_ID": settings.app_id})
    env.update(extra)
    return env


def cli(settings: Settings, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli.main", *args], cwd=REPO, env=_cli_env(settings, **extra),
                          capture_output=True, text=True, timeout=180)


def _wait_url(settings: Settings, worker: Worker, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.alive, worker.log_tail()
        found = [w.url for w in running_workers(settings.data_dir) if w.pid == worker.proc.pid]  # type: ignore[union-attr]
        if found:
            try:
                with urllib.request.urlopen(f"{found[0]}/ping", timeout=10) as response:
                    if response.read() == b"Ok.\n":
                        return found[0]
            except OSError:
                pass
        time.sleep(0.3)
    raise AssertionError("worker never served /ping:\n" + worker.log_tail())


def _wait_sql(url: str, worker: Worker, timeout: float = 180, **params: str) -> None:
    """Until the sink has migrated its tables and answers queries on them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.alive, worker.log_tail()
        try:
            query = urllib.parse.urlencode({"query": "SELECT count() FROM events", **params})
            with urllib.request.urlopen(f"{url}/?{query}", timeout=30) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError("live SQL never answered:\n" + worker.log_tail())


def _produce(settings: Settings, events: list[dict[str, Any]], grants: list[dict[str, Any]], rate: float) -> None:
    async def run() -> None:
        async with CreditflowProducer(settings, bootstrap_servers=settings.kafka_bootstrap_servers) as p:
            for g in grants:
                await p.emit_grant(g)
            start = time.monotonic()
            for i, ev in enumerate(events, 1):
                await p.emit_interaction(ev)
                if i % 50 == 0:
                    await p.flush()
                    ahead = i / rate - (time.monotonic() - start)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            await p.flush()

    asyncio.run(run())


def _curl(url: str, sql: str, *extra: str) -> tuple[int, str]:
    """(HTTP status, body) from curl when the machine has it, else from urllib."""
    if shutil.which("curl"):
        done = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *extra, "--data-binary", sql, f"{url}/"],
                              capture_output=True, text=True, timeout=120)
        body, _, status = done.stdout.rpartition("\n")
        return int(status), body
    request = urllib.request.Request(f"{url}/", data=sql.encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_every_client_answers_while_events_flow(settings: Settings, workers: list[Worker], tmp_path: Path) -> None:
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers or "", settings))
    worker = Worker(settings, "all", tmp_path, "all").start()
    workers.append(worker)
    url = _wait_url(settings, worker)
    _wait_sql(url, worker)
    gen = Generator(accounts=80, seed=5, account_prefix="live")
    events = list(gen.events(EVENTS))
    producer = threading.Thread(target=_produce, args=(settings, events, gen.grants(), 150.0))
    producer.start()

    host, port = url.removeprefix("http://").rsplit(":", 1)
    client = clickhouse_connect.get_client(host=host, port=int(port), autogenerate_session_id=False)
    counts: list[int] = []
    errors: list[str] = []

    def poll_client() -> None:
        # Its own client per thread: each one is an ordinary HTTP user of the bridge.
        mine = clickhouse_connect.get_client(host=host, port=int(port), autogenerate_session_id=False)
        while producer.is_alive():
            try:
                counts.append(int(mine.command("SELECT count() FROM events")))  # type: ignore[arg-type]
            except Exception as exc:
                errors.append(f"clickhouse-connect: {exc}")
            time.sleep(0.2)

    pollers = [threading.Thread(target=poll_client) for _ in range(2)]
    for t in pollers:
        t.start()
    try:
        # The CLI and curl during the inserts, alongside the pollers.
        seen_cli = cli(settings, "query", "SELECT count() AS n FROM events", "--format", "json")
        assert seen_cli.returncode == 0, seen_cli.stderr
        assert "n" in json.loads(seen_cli.stdout)[0]
        status, body = _curl(url, "SELECT count() FROM credit_ledger")
        assert status == 200 and body.strip().isdigit(), body
        report = cli(settings, "report", "--format", "json")
        assert report.returncode == 0, report.stderr
        assert set(json.loads(report.stdout)) >= {"credits by feature", "alert volume and verdicts"}
    finally:
        producer.join(timeout=600)
        for t in pollers:
            t.join(timeout=120)
    assert not errors, errors[:3]
    assert counts and counts == sorted(counts), "counts seen during the inserts went backwards"
    wait_drained(settings, workers)
    deadline = time.monotonic() + 60
    while int(client.command("SELECT count() FROM events")) != EVENTS:  # type: ignore[arg-type]
        assert time.monotonic() < deadline, "events never all landed"
        time.sleep(0.5)
    assert counts[0] < EVENTS, "no query answered while events were still arriving"

    # Every client agrees with the exact total, after the flow.
    rows = client.query("SELECT count() AS n, sum(list_micro) AS list FROM events "
                        "WHERE account_id LIKE {p:String}", parameters={"p": "live%"}).result_rows
    assert rows[0][0] == EVENTS and rows[0][1] > 0
    assert _curl(url, "SELECT sum(list_micro) FROM events")[1].strip() == str(rows[0][1])
    q = cli(settings, "query", "SELECT count() AS n FROM events WHERE account_id LIKE {p:String}",
            "-p", "p=live%", "--format", "csv")
    assert q.returncode == 0 and q.stdout.splitlines() == ["n", str(EVENTS)], q.stdout + q.stderr
    report = cli(settings, "report", "--days", "36500", "--format", "json")
    assert report.returncode == 0, report.stderr
    by_feature = json.loads(report.stdout)["credits by feature"]
    assert sum(int(r["requests"]) for r in by_feature) == EVENTS
    assert _curl(url, "SELECT count() FROM events")[1].strip() == str(EVENTS)

    # The ways out are refused through every door, and the sink still writes afterwards.
    refused = cli(settings, "query", "SELECT * FROM file('/etc/passwd', 'LineAsString')")
    assert refused.returncode != 0 and "refused" in refused.stderr and "root:" not in refused.stdout
    assert len(refused.stderr.strip().splitlines()) <= 3 and "Traceback" not in refused.stderr
    status, body = _curl(url, "SELECT * FROM FiLe/**/('/etc/passwd', 'LineAsString')")
    assert status == 403 and "root:" not in body
    with pytest.raises(Exception, match="refused"):
        client.query("SELECT * FROM url('http://127.0.0.1:9/', 'CSV', 'a String')")
    assert worker.alive
    assert worker.stop() == 0, worker.log_tail()


def test_beyond_loopback_the_worker_wants_the_password(settings: Settings, workers: list[Worker],
                                                      tmp_path: Path) -> None:
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers or "", settings))
    worker = Worker(settings, "sink", tmp_path, "sink", CREDITFLOW_WEB_HOST="0.0.0.0",
                    CREDITFLOW_SQL_USER="analyst", CREDITFLOW_SQL_PASSWORD="pa55-word").start()
    workers.append(worker)
    url = _wait_url(settings, worker)
    _wait_sql(url, worker, user="analyst", password="pa55-word")
    status, body = _curl(url, "SELECT count() FROM events")
    assert status == 401 and "Authentication failed" in body
    assert _curl(url, "SELECT 1", "-u", "analyst:wrong")[0] == 401
    assert _curl(url, "SELECT 1", "-u", "analyst:pa55-word") == (200, "1\n")
    no_password = cli(settings, "query", "SELECT 1 AS one")
    assert no_password.returncode != 0 and "Authentication failed" in no_password.stderr
    with_password = cli(settings, "query", "SELECT 1 AS one", "--format", "csv",
                        CREDITFLOW_SQL_USER="analyst", CREDITFLOW_SQL_PASSWORD="pa55-word")
    assert with_password.returncode == 0 and with_password.stdout.splitlines() == ["one", "1"], with_password.stderr
    assert worker.stop() == 0, worker.log_tail()


def test_with_nothing_running_the_cli_opens_chdb_itself_behind_the_same_guard(settings: Settings) -> None:
    assert running_workers(settings.data_dir) == []
    ok = cli(settings, "query", "SELECT {n:UInt8} + 1 AS two", "-p", "n=1", "--format", "csv")
    assert ok.returncode == 0 and ok.stdout.splitlines() == ["two", "2"], ok.stderr
    for sql in ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "SELECT file('/etc/passwd') AS f",
                "SELECT 1 INTO OUTFILE '/tmp/creditflow-never'", "SELECT 1 SETTINGS readonly = 0"):
        done = cli(settings, "query", sql)
        assert done.returncode == 2 and "refused" in done.stderr and "root:" not in done.stdout, done.stderr
        assert "Traceback" not in done.stderr
    # Evasions the guard's lexer could misread are refused by the engine's own reading of the text.
    canary = settings.data_dir / "canary.txt"
    canary.parent.mkdir(parents=True, exist_ok=True)
    canary.write_text("CANARY-51c0\n")
    planted = settings.data_dir / "planted.tsv"
    for sql in (f"SELECT 'x' AS x$y$ INTO OUTFILE '{planted}' -- $y$",
                f"SELECT 1 AS x$y$; SELECT file('{canary}') -- $y$", "SELECT * FROM python(canary)"):
        done = cli(settings, "query", sql)
        assert done.returncode != 0 and re.search("refused|exactly one statement", done.stderr), done.stderr
        assert "CANARY" not in done.stdout + done.stderr and not planted.exists()
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    # chDB turns introspection functions on; this path turns them off, as the bridge does.
    intro = cli(settings, "query", "SELECT addressToLine(toUInt64(1)) AS line")
    assert intro.returncode == 1 and "FUNCTION_NOT_ALLOWED" in intro.stderr and ".so" not in intro.stdout, intro
    # The engine's own limits apply on this path too.
    slow = cli(settings, "query", "SELECT count() FROM numbers(100000000000)",
               CREDITFLOW_SQL_MAX_EXECUTION_SECONDS="1")
    assert slow.returncode == 1 and "TIMEOUT_EXCEEDED" in slow.stderr, slow.stderr
