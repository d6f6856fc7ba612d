"""Finding running workers through the data dir."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web

from streams.runtime.web import pick_port, running_workers, url_for
from streams.settings import Settings


def _announce(data_dir: Path, pid: int, url: str) -> None:
    folder = data_dir / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{pid}.json").write_text(json.dumps({"url": url, "pid": pid, "role": "all", "app_id": "a"}))


def test_running_workers_lists_live_processes_only(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _announce(tmp_path, os.getpid(), "http://127.0.0.1:1111")
    _announce(tmp_path, dead.pid, "http://127.0.0.1:2222")
    (tmp_path / "workers" / "garbage.json").write_text("{not json")
    assert [w.url for w in running_workers(tmp_path)] == ["http://127.0.0.1:1111"]


def test_running_workers_without_folder(tmp_path: Path) -> None:
    assert running_workers(tmp_path / "nothing") == []


def test_pick_port_keeps_a_configured_port_and_finds_a_free_one() -> None:
    assert pick_port(Settings(web_port=6066)) == 6066
    assert 0 < pick_port(Settings(web_port=0)) < 65536


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "127.0.0.1", "::1"])
def test_the_announced_url_reaches_a_server_on_a_wildcard_address(host: str) -> None:
    """A server bound to "::" listens on IPv6 only (asyncio sets IPV6_V6ONLY), so the URL others
    use must be [::1], not 127.0.0.1."""

    async def probe() -> bytes:
        app = web.Application()

        async def ok(request: web.Request) -> web.Response:
            return web.Response(text="Ok.")

        app.router.add_get("/ping", ok)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, host, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            url = url_for(host, port)
            return await asyncio.to_thread(lambda: urllib.request.urlopen(f"{url}/ping", timeout=10).read())
        finally:
            await runner.cleanup()

    assert asyncio.run(probe()) == b"Ok."
