"""``GET /accounts/{account}/balance`` on a processor's web server.

The worker whose processor owns the account's partition answers from its state, with the same
function that computes the balances it publishes (``streams/credits/balances.py``), read under the
batch lock: the answer is what the last finished batch published, never a half-applied batch.
Any other worker forwards the request to the owner, found from the consumer group's own description
(``streams/runtime/owners.py``) and cached for a moment; a forwarded request is never forwarded again,
so a stale owner map answers 503 (retry) instead of looping.

Responses are JSON: ``{"balance": <CreditBalance>, "served_by": url, "owner": true}``; 404 when the
owner has no state for the account (no grant and no event yet), 503 while the partition has no owner
(a rebalance) or the owner cannot be reached.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import faust
from aiohttp import web
from yarl import URL

from streams.credits.balances import balance_record
from streams.runtime.batch_send import KeyPartitions
from streams.runtime.owners import partition_owners
from streams.runtime.web import add_route

if TYPE_CHECKING:
    from streams.processor import Processor

log = logging.getLogger("creditflow.balances")

ROUTE = "/accounts/{account}/balance"
FORWARDED_HEADER = "X-Creditflow-Forwarded"
# Owners change only when the group rebalances; a miss or a failed forward refreshes at once.
_OWNERS_TTL = 5.0
_FORWARD_TIMEOUT = 10.0


def balance_path(account: str) -> str:
    """The lookup's path for ``account``, every character but unreserved ones percent-encoded. An id
    that is all dots is encoded too: a client that normalises URLs would remove it as a dot segment."""
    segment = quote(account, safe="")
    if segment.strip(".") == "":
        segment = segment.replace(".", "%2E")
    return ROUTE.replace("{account}", segment)


def balance_url(base: str, account: str) -> URL:
    """``base`` + the lookup's path, marked as already encoded so the client sends it as it is (yarl
    would otherwise remove an encoded dot segment)."""
    return URL(base.rstrip("/") + balance_path(account), encoded=True)


class BalanceLookup:
    def __init__(self, processor: Processor, own_url: str) -> None:
        self.processor = processor
        self.own_url = own_url
        self.partitions: KeyPartitions | None = None
        self.owners: dict[int, str] = {}
        self.owners_at = 0.0
        self.owners_lock = asyncio.Lock()

    async def _partition(self, account: str) -> int:
        if self.partitions is None:
            producer = self.processor.producer
            assert producer is not None
            self.partitions = KeyPartitions(len(await producer.partitions_for(self.processor.events_topic)))
        return self.partitions(account.encode())

    def _json(self, body: dict[str, Any], status: int = 200) -> web.Response:
        return web.json_response(body, status=status, dumps=lambda v: json.dumps(v, separators=(",", ":")))

    async def handle(self, request: web.Request) -> web.Response:
        account = request.match_info["account"]
        processor = self.processor
        if processor.producer is None or processor.consumer is None:
            return self._json({"error": "the processor is starting"}, 503)
        partition = await self._partition(account)
        if partition in processor.owned:
            async with processor.lock:
                # Ownership may have moved while waiting for the batch in flight.
                if partition in processor.owned:
                    grants, usage = processor.grants.get(account), processor.usage.get(account)
                    if grants is None and usage is None:
                        return self._json({"error": f"no balance for account {account!r}", "partition": partition},
                                          404)
                    record = balance_record(account, grants, usage, processor.meter.policy.version, partition,
                                            time.time_ns() // 1_000_000)
                    return self._json({"balance": record, "served_by": self.own_url, "owner": True})
        if request.headers.get(FORWARDED_HEADER):
            return self._json({"error": f"partition {partition} is not owned here (any more)"}, 503)
        return await self._forward(request, account, partition)

    async def _owner(self, partition: int, refresh: bool) -> str | None:
        async with self.owners_lock:
            if refresh or partition not in self.owners or time.monotonic() - self.owners_at > _OWNERS_TTL:
                processor = self.processor
                self.owners = await partition_owners(processor.kafka, processor.group, processor.events_topic)
                self.owners_at = time.monotonic()
            return self.owners.get(partition)

    async def _forward(self, request: web.Request, account: str, partition: int) -> web.Response:
        for attempt in range(2):
            owner = await self._owner(partition, refresh=attempt > 0)
            if owner is None or owner == self.own_url:
                continue
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_FORWARD_TIMEOUT)) as session, \
                        session.get(balance_url(owner, account), headers={FORWARDED_HEADER: self.own_url}) as resp:
                    body = await resp.read()
                    if resp.status != 503:
                        return web.Response(body=body, status=resp.status, content_type="application/json")
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.info("forwarding a balance lookup to %s failed: %r", owner, exc)
        return self._json({"error": f"partition {partition} has no reachable owner right now; retry"}, 503)


def register_balance_lookup(app: faust.App, processor: Processor, own_url: str) -> BalanceLookup:
    lookup = BalanceLookup(processor, own_url)
    add_route(app, "GET", ROUTE, lookup.handle)
    return lookup
