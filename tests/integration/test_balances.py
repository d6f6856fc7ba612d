"""Balances and notifications end to end, with SIGKILLs of a processor: the lookup (owner and
forwarded), the compacted topic (BalanceView) and ClickHouse all equal the independent
recomputation, and each notification exists once per grant and threshold."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from click.testing import CliRunner

from sinks.client import close
from streams.balance_lookup import balance_path
from streams.balance_view import BalanceView
from streams.cli.balance import balance as balance_cmd
from streams.credits.policy import load_policy
from streams.runtime.topics import ensure_topics
from streams.runtime.web import running_workers
from streams.settings import Settings
from streams.wire.codec import Decoder
from tests.integration.expected import MICRO, Expected, ExpectedBalance, expected
from tests.integration.harness import Worker, group_lag, wait_drained, wait_processors_own
from tests.integration.test_pipeline import _produce, _query, _wait_grants_applied, _workload, settings

pytestmark = pytest.mark.integration
__all__ = ["settings"]  # a fixture shared with test_pipeline

POLICY = load_policy()
WEEK_MS = 7 * 86_400_000


def _credits(micro: int) -> Decimal:
    return Decimal(micro) * MICRO


def _assert_balance(got: dict[str, Any], want: ExpectedBalance, where: str) -> None:
    account = got["account_id"]
    assert _credits(got["total_remaining_micro"]) == want.total_remaining, (where, account)
    assert _credits(got["grant_funded_micro"]) == want.grant_funded, (where, account)
    assert _credits(got["subscription_funded_micro"]) == want.subscription_funded, (where, account)
    assert {g["grant_id"]: (_credits(g["remaining_micro"]), g["status"]) for g in got["grants"]} == want.grants, \
        (where, account)


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _wait_outputs_sunk(settings: Settings, timeout: float = 180) -> None:
    bootstrap = settings.kafka_bootstrap_servers or ""
    topics = [settings.topic("credit-balances"), settings.topic("credit-notifications")]
    deadline = time.monotonic() + timeout
    while group_lag(bootstrap, f"{settings.app_id}-sink", topics) != 0:
        assert time.monotonic() < deadline, "the sink did not drain the balance topics"
        time.sleep(0.5)


def _notifications_on_topic(settings: Settings) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        topic = settings.topic("credit-notifications")
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap_servers,
                                    auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        try:
            tps = [tp for tp in consumer.assignment()] or None
            while not tps:
                await asyncio.sleep(0.1)
                tps = list(consumer.assignment())
            ends = await consumer.end_offsets(tps)
            decoder = Decoder("CreditNotification")
            out: list[dict[str, Any]] = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                behind = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
                if not behind:
                    return out
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    out.extend(decoder.decode(r.value) for r in records if r.value)
            raise AssertionError("credit-notifications was not read to its end in time")
        finally:
            await consumer.stop()

    return asyncio.run(read())


def _expected_notification_ids(want: Expected, grants: list[dict[str, Any]]) -> set[str]:
    """Usage thresholds and exhaustion follow from each grant's final use (use only grows); a fall
    below the floor from the final balance (every grant here starts above it, before any event)."""
    ids: set[str] = set()
    for g in grants:
        used = want.grant_used.get(g["grant_id"], Decimal(0))
        amount = Decimal(g["amount_micro"]) * MICRO
        for pct in POLICY.usage_thresholds_pct:
            if used * 100 >= amount * pct:
                ids.add(f"{g['account_id']}/USAGE_THRESHOLD/{g['grant_id']}/{pct}")
        if used >= amount:
            ids.add(f"{g['account_id']}/GRANT_EXHAUSTED/{g['grant_id']}")
    floor = _credits(POLICY.low_balance_floor_micro)
    for account in {g["account_id"] for g in grants}:
        if want.balances[account].total_remaining < floor:
            ids.add(f"{account}/LOW_BALANCE/1")
    return ids


def test_balances_and_notifications_survive_sigkills(settings: Settings, workers: list[Worker],
                                                     tmp_path: Path) -> None:
    _gen, grants, events = _workload(120, 6_000, 41, "bal")
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers or "", settings))
    main = Worker(settings, "all", tmp_path, "main").start()
    crashy = Worker(settings, "processor", tmp_path, "crashy").start()
    workers.extend([main, crashy])
    _produce(settings, grants, [])
    _wait_grants_applied(settings, main)

    producer = threading.Thread(target=_produce, args=(settings, [], events, 1_000.0), daemon=True)
    producer.start()
    kills = 0
    while producer.is_alive() or kills < 3:
        time.sleep(1.5 + kills % 3)
        crashy.kill()
        kills += 1
        crashy.start()
        if kills >= 5:
            break
    producer.join(timeout=120)
    assert not producer.is_alive()
    wait_drained(settings, workers, timeout=300)
    _wait_outputs_sunk(settings)
    want = expected(events, grants)
    accounts = sorted(want.balances)

    # The lookup: every account through every worker (one owns it, the other forwards).
    wait_processors_own(settings, 2)
    live = [w for w in running_workers(settings.data_dir) if w.app_id == settings.app_id]
    assert len(live) == 2, live
    served: Counter[bool] = Counter()
    for account in accounts:
        answers = []
        for ann in live:
            status, body = _get(ann.url + balance_path(account))
            assert status == 200, (ann.url, account, body)
            _assert_balance(body["balance"], want.balances[account], f"lookup via {ann.url}")
            served[body["owner"] and body["served_by"] == ann.url] += 1
            answers.append({k: v for k, v in body["balance"].items() if k != "updated_at"})
        assert answers[0] == answers[1]
    assert served[True] == served[False] == len(accounts), "each account: one owner answer, one forwarded"
    assert _get(live[0].url + balance_path("bal-nobody"))[0] == 404

    # The compacted topic, as a service's BalanceView holds it: the same records as the lookup's.
    async def view() -> dict[str, Any]:
        async with BalanceView(settings) as v:
            await v.wait_caught_up(60)
            assert v.staleness().caught_up and v.staleness().seconds < 5
            return {a: v.get(a) for a in accounts}

    on_topic = asyncio.run(view())
    for account in accounts:
        rec = on_topic[account]
        assert rec is not None, account
        _assert_balance(rec, want.balances[account], "topic")
        status, body = _get(live[0].url + balance_path(account))
        assert {k: v for k, v in rec.items() if k != "updated_at"} == \
               {k: v for k, v in body["balance"].items() if k != "updated_at"}

    # The command, through a running worker.
    cli_env = {"CREDITFLOW_DATA_DIR": str(settings.data_dir), "CREDITFLOW_APP_ID": settings.app_id,
               "CREDITFLOW_TOPIC_PREFIX": settings.topic_prefix,
               "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers or ""}
    result = CliRunner().invoke(balance_cmd, [accounts[0], "--json"], env=cli_env)
    assert result.exit_code == 0, result.output
    _assert_balance(json.loads(result.output), want.balances[accounts[0]], "command")

    # Notifications on the topic: a replay may re-send one (same id, same content), never a new one.
    notes = _notifications_on_topic(settings)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for n in notes:
        by_id.setdefault(n["notification_id"], []).append({k: v for k, v in n.items() if k != "created_at"})
    for copies in by_id.values():
        assert all(c["kind"] == copies[0]["kind"] and c["grant_id"] == copies[0]["grant_id"] for c in copies)
        # Only a batch replayed after a kill publishes a notification again; state stops the rest.
        assert len(copies) <= 1 + kills, copies
    exact_kinds = {"USAGE_THRESHOLD", "GRANT_EXHAUSTED", "LOW_BALANCE"}
    want_ids = _expected_notification_ids(want, grants)
    assert {i for i, c in by_id.items() if c[0]["kind"] in exact_kinds} == want_ids
    assert len(want_ids) > 20
    latest = {a: max((e["occurred_at"] for e in events if e["account_id"] == a), default=0) for a in accounts}
    expiry_window = {g["grant_id"] for g in grants
                     if g["expires_at"] - WEEK_MS <= max(latest[g["account_id"]], g["occurred_at"])}
    expiring = [c[0]["grant_id"] for c in by_id.values() if c[0]["kind"] == "GRANT_EXPIRING"]
    assert len(expiring) == len(set(expiring)) and set(expiring) <= expiry_window

    for w in workers:
        assert w.stop() == 0, w.log_tail()
    # No worker running: the command reads the account's partition of the topic instead.
    result = CliRunner().invoke(balance_cmd, [accounts[-1]], env=cli_env)
    assert result.exit_code == 0, result.output
    assert "from the credit-balances topic" in result.output
    assert f"{want.balances[accounts[-1]].total_remaining:.6f} credits left" in result.output
    try:
        rows = _query(settings, "SELECT account_id, total_remaining_micro, grant_funded_micro, "
                                "subscription_funded_micro, grant_ids, grant_remaining_micro, grant_statuses "
                                "FROM v_credit_balances")
        assert sorted(r[0] for r in rows) == accounts
        for account, total, funded, sub, ids, remaining, statuses in rows:
            _assert_balance({"account_id": account, "total_remaining_micro": total, "grant_funded_micro": funded,
                             "subscription_funded_micro": sub,
                             "grants": [{"grant_id": i, "remaining_micro": r, "status": s}
                                        for i, r, s in zip(ids, remaining, statuses, strict=True)]},
                            want.balances[account], "clickhouse")
        stored = _query(settings, "SELECT notification_id, count() FROM credit_notifications FINAL "
                                  "GROUP BY notification_id")
        assert {i for i, _n in stored} == set(by_id) and all(n == 1 for _i, n in stored)
    finally:
        close(settings.resolved_clickhouse_url)
