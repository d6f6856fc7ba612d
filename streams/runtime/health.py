"""``/health``, ``/ready`` and ``/metrics`` on the worker's web server.

- ``/health`` (liveness): the process answers and its event loop runs timers on time. A blocked
  loop cannot answer at all, so the probe times out; a loop that only answers late (a timer last
  ran more than ``LOOP_STUCK_S`` ago) is reported 503 too. Restarting is the cure for both.
- ``/ready`` (readiness): every consumer group of this worker has joined and received its
  assignment, none is stalled (it polled or committed a batch within
  ``CREDITFLOW_READY_STALL_SECONDS``), and for a sink ClickHouse is reachable and taking inserts.
  Not ready is not a reason to restart: ClickHouse may simply be away.
Both answer JSON with every check, 200 when all pass, 503 otherwise.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import faust
from aiohttp import web
from mode import Service

from streams.runtime.metrics import GroupProgress, Metrics, metrics_handler, metrics_of
from streams.runtime.web import add_route
from streams.settings import Settings

# Timer period of the loop watch, and how long without a tick counts as a stuck loop.
LOOP_TICK_S = 0.5
LOOP_STUCK_S = 10.0
# A ClickHouse ping answer is reused this long: probes must not queue behind each other. A store
# that succeeded more recently than STORED_RECENTLY_S answers for ClickHouse without a ping (a ping
# waits behind the store in flight on the sink's one ClickHouse thread).
PING_CACHE_S = 5.0
STORED_RECENTLY_S = 30.0
PING_TIMEOUT_S = 5.0

Ping = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def group_checks(groups: Mapping[str, GroupProgress], now: float, started: float, stall_after: float) -> list[Check]:
    """Readiness of each consumer group: assigned, and polling or committing recently."""
    checks: list[Check] = []
    for name, progress in sorted(groups.items()):
        if progress.assigned is None:
            checks.append(Check(f"{name}: assignment", False, "waiting for the group to assign partitions"))
            continue
        held = len(progress.assigned)
        checks.append(Check(f"{name}: assignment", True,
                            f"{held} partitions" if held else "no partitions (more members than partitions)"))
        last = max(progress.last_poll, progress.last_batch) or started
        quiet = now - last
        checks.append(Check(f"{name}: progress", quiet <= stall_after,
                            f"last poll or batch {quiet:.1f}s ago (stalled after {stall_after:g}s)"))
    return checks


def clickhouse_check(failing: bool, error: str, reachable: bool | None) -> Check:
    """ClickHouse for a sink: its stores (and plan reads) are not failing, and it answers a ping."""
    if failing:
        return Check("clickhouse", False, f"failing, retrying: {error}")
    if reachable is None:
        return Check("clickhouse", False, "no answer to ping in time")
    return Check("clickhouse", reachable, "reachable" if reachable else "ping failed")


class LoopWatch(Service):
    """Ticks on the event loop and records how late each tick ran."""

    def __init__(self, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metrics = metrics
        self.last_tick = time.monotonic()
        self.lag = 0.0

    @Service.task
    async def _tick(self) -> None:
        while not self.should_stop:
            before = time.monotonic()
            await asyncio.sleep(LOOP_TICK_S)
            self.last_tick = time.monotonic()
            self.lag = max(0.0, self.last_tick - before - LOOP_TICK_S)
            self.metrics.event_loop_lag.set(self.lag)


class Health:
    """The state behind the probes of one worker."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.loop = LoopWatch(metrics)
        self.ping: Ping | None = None
        self._pinged: tuple[float, bool | None] = (-PING_CACHE_S, None)

    async def _reachable(self) -> bool | None:
        assert self.ping is not None
        at, answer = self._pinged
        now = time.monotonic()
        if now - at < PING_CACHE_S:
            return answer
        try:
            answer = await asyncio.wait_for(self.ping(), PING_TIMEOUT_S)
        except TimeoutError:
            answer = None
        except Exception:
            answer = False
        self._pinged = (time.monotonic(), answer)
        return answer

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        since = time.monotonic() - self.loop.last_tick
        ok = since <= LOOP_STUCK_S
        return ok, {"status": "ok" if ok else "event loop stuck", "pid": os.getpid(),
                    "role": self.settings.role.value, "loop_lag_seconds": round(self.loop.lag, 4),
                    "seconds_since_loop_tick": round(since, 3),
                    "uptime_seconds": round(time.monotonic() - self.metrics.started_at, 1)}

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        m = self.metrics
        checks = group_checks(m.groups, time.monotonic(), m.started_at, self.settings.ready_stall_seconds)
        if self.ping is not None:
            recent = bool(m.sink_stored_at) and time.monotonic() - m.sink_stored_at < STORED_RECENTLY_S
            reachable = None if m.sink_error else (True if recent else await self._reachable())
            checks.append(clickhouse_check(bool(m.sink_error), m.sink_error, reachable))
        if not checks:
            checks.append(Check("roles", False, "this worker runs no consumer"))
        ok = all(c.ok for c in checks)
        return ok, {"status": "ready" if ok else "not ready", "role": self.settings.role.value,
                    "checks": [c.as_json() for c in checks]}


def health_of(app: faust.App) -> Health:
    health: Health | None = getattr(app, "creditflow_health", None)
    if health is None:
        raise RuntimeError("register_health(app, settings) was not called for this app")
    return health


def register_health(app: faust.App, settings: Settings) -> Health:
    """Serve /health, /ready and /metrics on the app's web server."""
    metrics = metrics_of(app)
    health = Health(settings, metrics)
    app.creditflow_health = health  # type: ignore[attr-defined]
    app.service(health.loop)  # type: ignore[arg-type]  # Faust accepts instances too, its stub says classes

    async def live(request: web.Request) -> web.Response:
        ok, body = health.liveness()
        return web.json_response(body, status=200 if ok else 503)

    async def ready(request: web.Request) -> web.Response:
        ok, body = await health.readiness()
        return web.json_response(body, status=200 if ok else 503)

    async def export_readiness() -> None:
        ok, _ = await health.readiness()
        metrics.ready.set(1 if ok else 0)

    metrics.before_scrape.append(export_readiness)
    add_route(app, "GET", "/health", live)
    add_route(app, "GET", "/ready", ready)
    add_route(app, "GET", "/metrics", metrics_handler(metrics))
    return health


def watch_service(app: faust.App, service: Any, ping: Ping | None = None) -> None:
    """Report ``service`` (a batch consumer with ``group``, ``consumer`` and ``metrics``) through the
    app's metrics and readiness; ``ping`` makes ClickHouse part of readiness."""
    metrics = metrics_of(app)
    service.metrics = metrics
    metrics.watch(service.group, lambda: service.consumer)
    metrics.watch_tables(getattr(service, "tables", ()))
    if ping is not None:
        health_of(app).ping = ping
