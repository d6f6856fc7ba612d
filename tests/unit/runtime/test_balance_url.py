"""The balance lookup's URL carries any account id to the route intact, through aiohttp's client
(which the forwarding worker and ``creditflow balance`` use) and server: '/', '%', spaces, unicode,
and the dot segments a URL normaliser would otherwise fold away."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from streams.balance_lookup import ROUTE, balance_url

IDS = ["plain", "a/b", "a%2Fb", "with space", "ünï©ødé", "a?b#c", "100%", "a+b", ".", "..", "../x", "a/../b"]


def test_every_account_id_reaches_the_route_unchanged() -> None:
    async def run() -> dict[str, tuple[int, str]]:
        async def echo(request: web.Request) -> web.Response:
            return web.json_response({"account": request.match_info["account"]})

        app = web.Application()
        app.router.add_get(ROUTE, echo)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        got: dict[str, tuple[int, str]] = {}
        try:
            async with aiohttp.ClientSession() as session:
                for account in IDS:
                    async with session.get(balance_url(f"http://127.0.0.1:{port}", account)) as resp:
                        got[account] = (resp.status, (await resp.json())["account"] if resp.status == 200 else "")
        finally:
            await runner.cleanup()
        return got

    assert asyncio.run(run()) == {a: (200, a) for a in IDS}
