"""Running real creditflow workers as subprocesses, and reading consumer-group progress from Kafka.

Workers are separate processes so a test can SIGKILL them; chDB admits one process per data path,
so ClickHouse is read only after every worker holding it has exited.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiokafka.errors import CoordinatorNotAvailableError, GroupCoordinatorNotAvailableError, NotCoordinatorError

from streams.runtime.kafka_clients import KafkaClients
from streams.runtime.owners import partition_owners
from streams.runtime.topics import group_lag as topics_group_lag
from streams.runtime.web import running_workers
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[2]


class Worker:
    """One ``creditflow worker`` subprocess; always reaped, never left behind."""

    def __init__(self, settings: Settings, role: str, log_dir: Path, name: str, **env: str) -> None:
        self.settings = settings
        self.role = role
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def environment(self) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITFLOW_")}
        env.update({
            "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers or "",
            "CLICKHOUSE_URL": s.resolved_clickhouse_url,
            "CREDITFLOW_TOPIC_PREFIX": s.topic_prefix,
            "CREDITFLOW_APP_ID": s.app_id,
            "CREDITFLOW_DATA_DIR": str(s.data_dir),
            "CREDITFLOW_PARTITIONS": str(s.partitions),
            "CREDITFLOW_SINK_FLUSH_SECONDS": str(s.sink_flush_seconds),
            "CREDITFLOW_PROCESS_BATCH": str(s.process_batch),
            "CREDITFLOW_LOG_LEVEL": os.environ.get("CREDITFLOW_TEST_WORKER_LOG_LEVEL", "WARNING"),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.env)
        return env

    def start(self) -> Worker:
        assert self.proc is None or self.proc.poll() is not None, "worker already running"
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n===== start #{self.starts} ({self.role}) =====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli.main", "worker", "--role", self.role],
            cwd=REPO, env=self.environment(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the crash the exactly-once design must survive."""
        if self.alive:
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM and wait for a clean shutdown; SIGKILL if it does not come."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        return self.proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def group_lag(bootstrap: str, group: str, topics: Iterable[str]) -> int:
    """Records not yet committed by ``group``; a huge number while the group coordinator is not
    up yet (a fresh broker creates the offsets topic on first use)."""
    try:
        return asyncio.run(topics_group_lag(bootstrap, group, list(topics)))
    except (GroupCoordinatorNotAvailableError, CoordinatorNotAvailableError, NotCoordinatorError):
        return 1 << 62


def wait_drained(settings: Settings, workers: list[Worker], timeout: float = 240, settle: float = 2.0) -> None:
    """Until the processors have committed every input and the sink every output, twice in a row."""
    names = {k: settings.topic(k) for k in ("interaction-events", "credit-grants", "usage-enriched",
                                             "refinement-feed", "dead-letters")}
    bootstrap = settings.kafka_bootstrap_servers or ""
    deadline = time.monotonic() + timeout
    clean = 0
    last: tuple[int, int] = (-1, -1)
    while time.monotonic() < deadline:
        for w in workers:
            if not w.alive:
                raise AssertionError(f"worker {w.name} died:\n{w.log_tail()}")
        proc_lag = group_lag(bootstrap, f"{settings.app_id}-processor",
                             [names["interaction-events"], names["credit-grants"]])
        sink_lag = group_lag(bootstrap, f"{settings.app_id}-sink",
                             [names["usage-enriched"], names["refinement-feed"], names["dead-letters"],
                              names["credit-grants"]])
        last = (proc_lag, sink_lag)
        clean = clean + 1 if proc_lag == 0 and sink_lag == 0 else 0
        if clean >= 2:
            return
        time.sleep(settle)
    raise AssertionError(f"pipeline did not drain in {timeout}s (processor lag, sink lag) = {last}")


def wait_processors_own(settings: Settings, count: int, timeout: float = 120) -> set[str]:
    """Until ``count`` workers are announced and the processor group has spread every input partition
    over exactly their web servers: a restarted worker drains nothing, yet owns nothing until it has
    rejoined the group."""
    bootstrap = settings.kafka_bootstrap_servers or ""
    topic = settings.topic("interaction-events")
    deadline = time.monotonic() + timeout
    urls: set[str] = set()
    owners: dict[int, str] = {}
    while time.monotonic() < deadline:
        urls = {w.url for w in running_workers(settings.data_dir) if w.app_id == settings.app_id}
        try:
            owners = asyncio.run(partition_owners(KafkaClients(settings, bootstrap),
                                                  f"{settings.app_id}-processor", topic))
        except (GroupCoordinatorNotAvailableError, CoordinatorNotAvailableError, NotCoordinatorError):
            owners = {}
        if (len(urls) == count and len(owners) == settings.partitions
                and set(owners.values()) == urls):
            return urls
        time.sleep(0.5)
    raise AssertionError(f"processors did not settle in {timeout}s: announced {urls}, owners {owners}")


def env_for(settings: Settings) -> dict[str, Any]:
    return {"settings": settings}
