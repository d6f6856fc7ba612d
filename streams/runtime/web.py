"""The worker's HTTP server: Faust's own (aiohttp) web server, and how others find it.

Every HTTP endpoint of creditflow (health, metrics, balances, live SQL) is an aiohttp route on the
faust.App's web server, added through ``add_route`` before the worker starts. The port is
``CREDITFLOW_WEB_PORT``; 0 (the default) takes any free port, so several workers on one machine
never collide. Each running worker announces its address in ``<data dir>/workers/<pid>.json``:
that is how ``creditflow query`` and the other commands find a running worker on this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from aiohttp import web
from mode import Service

from streams.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def pick_port(settings: Settings) -> int:
    """The port to serve on: the configured one, or (0) one the kernel says is free now. Faust
    refuses port 0 itself, so the free port is asked for here, a moment before the server binds it."""
    if settings.web_port:
        return settings.web_port
    with socket.socket(socket.AF_INET6 if ":" in settings.web_host else socket.AF_INET) as sock:
        sock.bind((settings.web_host, 0))
        port: int = sock.getsockname()[1]
        return port


def check_bindable(host: str, port: int) -> None:
    """Raise ``OSError`` when ``host:port`` cannot be listened on (taken, or not an address of this
    machine), so the worker says so in one line before it starts, not Faust with a traceback after.
    ``SO_REUSEADDR`` as aiohttp binds: a port left in TIME_WAIT by a previous run is free."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))


def url_for(host: str, port: int) -> str:
    """The URL others reach a server listening on ``host:port`` with (a wildcard address: loopback).
    A server bound to "::" listens on IPv6 only (asyncio sets IPV6_V6ONLY), hence [::1] there."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def add_route(app: faust.App, method: str, path: str, handler: Handler) -> None:
    """Serve ``handler`` at ``method path`` on the worker's web server (aiohttp routing syntax)."""
    # Faust's web is aiohttp (faust.web.drivers.aiohttp); its base type does not name the aiohttp app.
    aiohttp_app: web.Application = app.web.web_app  # type: ignore[attr-defined]
    aiohttp_app.router.add_route(method, path, handler)


@dataclass(frozen=True)
class Announcement:
    """A running worker, as written to its announcement file."""

    url: str
    pid: int
    role: str
    app_id: str


def _announce_dir(data_dir: Path) -> Path:
    return data_dir / "workers"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_workers(data_dir: Path) -> list[Announcement]:
    """Workers announced under ``data_dir`` whose process is still alive, newest first."""
    found: list[tuple[float, Announcement]] = []
    folder = _announce_dir(data_dir)
    if not folder.is_dir():
        return []
    for path in folder.glob("*.json"):
        try:
            raw = json.loads(path.read_text())
            ann = Announcement(str(raw["url"]), int(raw["pid"]), str(raw["role"]), str(raw["app_id"]))
            mtime = path.stat().st_mtime
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _alive(ann.pid):
            found.append((mtime, ann))
    return [ann for _, ann in sorted(found, key=lambda item: item[0], reverse=True)]


class WebAnnouncer(Service):
    """Writes this worker's web address to the data dir once the server listens; removes it on stop."""

    def __init__(self, app: faust.App, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.settings = settings
        self.path = _announce_dir(settings.data_dir) / f"{os.getpid()}.json"
        self.url: str | None = None

    def bound_url(self) -> str | None:
        runner = getattr(self.app.web, "_runner", None)
        addresses = list(getattr(runner, "addresses", None) or ())
        if not addresses:
            return None
        host, port = addresses[0][:2]
        return url_for(str(host), int(port))

    @Service.task
    async def _announce(self) -> None:
        while not self.should_stop:
            url = self.bound_url()
            if url is not None:
                self.url = url
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps({"url": url, "pid": os.getpid(), "role": self.settings.role.value,
                                           "app_id": self.settings.app_id}))
                tmp.replace(self.path)
                return
            await asyncio.sleep(0.05)

    async def on_stop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def register_web(app: faust.App, settings: Settings) -> WebAnnouncer:
    from streams.runtime.health import register_health

    register_health(app, settings)
    announcer = WebAnnouncer(app, settings)
    app.service(announcer)  # type: ignore[arg-type]  # Faust accepts instances too, its stub says classes
    app.creditflow_web = announcer  # type: ignore[attr-defined]
    return announcer
