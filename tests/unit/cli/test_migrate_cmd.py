"""``creditflow migrate --dry-run`` prints the DDL as this deployment would run it; a cluster with
the embedded engine is a one-line error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CREDITFLOW_", "CLICKHOUSE_"))}
    return subprocess.run([sys.executable, "-m", "streams.cli.main", *args], cwd=REPO, capture_output=True,
                          text=True, env={**base, "CREDITFLOW_DATA_DIR": str(tmp_path), **env}, timeout=120)


def test_dry_run_on_an_unreachable_cluster_prints_every_rendered_statement(tmp_path: Path) -> None:
    result = _run(tmp_path, "migrate", "--dry-run", CLICKHOUSE_URL="http://u:p@127.0.0.1:1/default",
                  CLICKHOUSE_CLUSTER="prod")
    assert result.returncode == 0, result.stderr
    assert "not reachable" in result.stderr and "u:p@" not in result.stderr
    out = result.stdout
    assert out.startswith("-- DDL for cluster prod")
    assert "CREATE TABLE IF NOT EXISTS events_local ON CLUSTER prod" in out
    assert "ENGINE = Distributed('prod', currentDatabase(), 'events_local', cityHash64(account_id));" in out
    assert "-- 0008_sink_stores" in out and "ALTER TABLE sink_batches_local ON CLUSTER prod" in out


def test_dry_run_on_chdb_lists_pending_and_prints_their_ddl(tmp_path: Path) -> None:
    result = _run(tmp_path, "migrate", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "pending" in result.stdout and "-- DDL for a single node" in result.stdout
    assert "CREATE TABLE IF NOT EXISTS events\n" in result.stdout and "ON CLUSTER" not in result.stdout


def test_cluster_needs_a_server(tmp_path: Path) -> None:
    result = _run(tmp_path, "migrate", CLICKHOUSE_CLUSTER="prod")
    assert result.returncode == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "CLICKHOUSE_CLUSTER needs a ClickHouse server" in lines[0], result.stderr
