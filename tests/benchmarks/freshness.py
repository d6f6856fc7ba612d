"""Balance freshness: from an event being produced to its balance being visible, p50/p99.

A real worker (``creditflow worker --role processor``, a subprocess) meters events sent at a fixed
rate, each stamped with its send time (``occurred_at``, wall-clock ms). A balance reflects an event
once its ``event_time`` (the latest event time folded into it) reaches the event's: send times grow,
so that is exact. Two places are watched from this process:

- the topic: a consumer of credit-balances notes when each balance arrives; an event's latency is
  the arrival of its account's first balance that reflects it;
- the lookup: for a sample of events (every ``lookup_every``-th, when one of a few pollers is free),
  a poller asks the worker's ``GET /accounts/{id}/balance`` every 10 ms until the answer reflects it.

Leading ``warmup_s`` seconds are left out of the figures, as in the latency stage.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.catalogue import get_catalogue
from streams.balance_lookup import balance_path
from streams.runtime.topics import group_lag
from streams.runtime.web import running_workers
from streams.wire.codec import Decoder, encode_single_object_with
from tests.benchmarks import report
from tests.benchmarks.workload import create_topics, latency_events, produce_grants, producer

# The pollers are HTTP clients of the measured worker: bounded, so their load stays small next to the
# events' (at most _POLLERS requests in flight, one per _POLL_S each: 400 requests/s at most).
_POLL_S = 0.010
_POLLERS = 4
_LOOKUP_TIMEOUT_S = 30.0


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of ``values``."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))]


def latencies_from_topic(sent: list[tuple[str, int]], seen: dict[str, list[tuple[int, float]]]) -> list[float]:
    """Per sent (account, send ms): ms until the first balance of the account with event_time >= it
    arrived; events never reflected are left out (counted by the caller). Pure."""
    out: list[float] = []
    for account, at in sent:
        arrival = next((arrived for event_time, arrived in seen.get(account, ()) if event_time >= at), None)
        if arrival is not None:
            out.append(arrival - at)
    return out


async def _spawn_worker(bootstrap: str, prefix: str, app_id: str, data_dir: Path,
                        log: Path) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITFLOW_")}
    env.update({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "CREDITFLOW_TOPIC_PREFIX": prefix,
                "CREDITFLOW_APP_ID": app_id, "CREDITFLOW_DATA_DIR": str(data_dir),
                "CREDITFLOW_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"})
    if os.environ.get("CREDITFLOW_TRACE_BATCHES"):  # the worker's per-batch timings, in its log
        env.update({"CREDITFLOW_TRACE_BATCHES": "1", "CREDITFLOW_LOG_LEVEL": "INFO"})
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as err:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streams.cli.main", "worker", "--role", "processor", cwd=str(report.REPO),
            env=env, stdout=err, stderr=err, start_new_session=True)


async def measure(bootstrap: str, *, rate: float, seconds: float, warmup_s: float, accounts: int, seed: int,
                  work_dir: Path, log: Path, track: Callable[[asyncio.subprocess.Process], None],
                  lookup_every: int = 10) -> dict[str, Any]:
    prefix = f"bench-fresh-{secrets.token_hex(3)}."
    app_id = prefix.strip(".")
    data_dir = work_dir / app_id
    await create_topics(bootstrap, prefix)
    await produce_grants(bootstrap, prefix, accounts=accounts, seed=seed)
    n = max(200, int(rate * seconds))
    events = latency_events(n, accounts=accounts, seed=seed, prefix=prefix)
    proc = await _spawn_worker(bootstrap, prefix, app_id, data_dir, log)
    track(proc)
    # Ready: the worker announced its web server and applied every grant.
    deadline = time.monotonic() + 180
    url = None
    while url is None or await group_lag(bootstrap, f"{app_id}-processor", [f"{prefix}credit-grants"]) != 0:
        if proc.returncode is not None or time.monotonic() > deadline:
            return {"error": f"the worker did not become ready; see {log}"}
        live = running_workers(data_dir)
        url = live[0].url if live else None
        await asyncio.sleep(0.2)

    seen: dict[str, list[tuple[int, float]]] = {}
    topic = f"{prefix}credit-balances"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # a topic this client never asked about yet
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            raise LookupError(f"{topic} is not in the cluster metadata")
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
    except BaseException:
        await consumer.stop()
        raise
    decoder = Decoder("CreditBalance")

    async def follow() -> None:
        while True:
            for records in (await consumer.getmany(timeout_ms=50)).values():
                arrived = time.time() * 1000
                for r in records:
                    rec = decoder.decode(r.value)
                    seen.setdefault(rec["account_id"], []).append((rec["event_time"], arrived))

    lookup_ms: list[tuple[int, float]] = []
    lookup_missed = 0
    in_flight = 0

    async def poll(session: aiohttp.ClientSession, account: str, at: int) -> None:
        nonlocal lookup_missed, in_flight
        end = time.monotonic() + _LOOKUP_TIMEOUT_S
        try:
            while time.monotonic() < end:
                async with session.get(url + balance_path(account)) as resp:
                    if resp.status == 200:
                        body = await resp.json()
                        if body["balance"]["event_time"] >= at:
                            lookup_ms.append((at, time.time() * 1000 - at))
                            return
                await asyncio.sleep(_POLL_S)
            lookup_missed += 1
        finally:
            in_flight -= 1

    follower = asyncio.create_task(follow())
    pollers: list[asyncio.Task[None]] = []
    sent: list[tuple[str, int]] = []
    sv = get_catalogue().latest("InteractionEvent")
    p = producer(bootstrap, linger_ms=0)
    await p.start()
    try:
        async with aiohttp.ClientSession() as session:
            start = time.monotonic()
            i = 0
            while i < n:
                due = min(n, int((time.monotonic() - start) * rate) + 1)
                while i < due:
                    ev = events[i]
                    ev["occurred_at"] = at = time.time_ns() // 1_000_000
                    await p.send(f"{prefix}interaction-events", encode_single_object_with(ev, sv),
                                 key=ev["account_id"].encode())
                    sent.append((ev["account_id"], at))
                    if i % lookup_every == 0 and in_flight < _POLLERS:
                        in_flight += 1
                        pollers.append(asyncio.create_task(poll(session, ev["account_id"], at)))
                    i += 1
                await asyncio.sleep(0.002)
            await p.flush()
            achieved = n / (time.monotonic() - start)
            await asyncio.gather(*pollers)
        wait_until = time.monotonic() + 60
        while len(latencies_from_topic(sent, seen)) < len(sent) and time.monotonic() < wait_until:
            await asyncio.sleep(0.2)
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await consumer.stop()
        await p.stop()
    cut = sent[0][1] + warmup_s * 1000 if sent else 0
    topic_ms = latencies_from_topic([s for s in sent if s[1] >= cut], seen)
    counted = [s for s in sent if s[1] >= cut]
    lookup = [ms for at, ms in lookup_ms if at >= cut]
    return {
        "rate": rate, "achieved_rate": achieved, "events": n,
        "topic_p50_ms": percentile(topic_ms, 0.5), "topic_p99_ms": percentile(topic_ms, 0.99),
        "topic_max_ms": max(topic_ms, default=None), "topic_unseen": len(counted) - len(topic_ms),
        "lookup_p50_ms": percentile(lookup, 0.5), "lookup_p99_ms": percentile(lookup, 0.99),
        "lookup_max_ms": max(lookup, default=None), "lookup_samples": len(lookup), "lookup_missed": lookup_missed,
    }
