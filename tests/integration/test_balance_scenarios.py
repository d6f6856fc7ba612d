"""Balances and notifications on a crafted workload the generator's does not reach: several grants per
account (one expiring mid-stream, one issued mid-stream), spend funded by the subscription once they
are used up, resent events, account ids with URL-special characters, several accounts per partition,
two processors with SIGKILLs, and a policy version with other thresholds, floor and expiry window
between the two phases. The lookup (while partitions move, and after), the topic and ClickHouse must
equal the independent recomputation; each notification must exist once, none announced afresh for a
threshold a grant had passed before the policy named it."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sinks.client import close
from streams.balance_lookup import balance_path
from streams.balance_view import BalanceView, partition_of
from streams.runtime.topics import ensure_topics
from streams.runtime.web import running_workers
from streams.settings import Settings
from streams.synthetic.generator import Generator
from tests.integration.expected import MICRO, POLICY, Expected, _policy, expected, price
from tests.integration.harness import Worker, wait_drained, wait_processors_own
from tests.integration.test_balances import _assert_balance, _get, _notifications_on_topic, _wait_outputs_sunk
from tests.integration.test_pipeline import _produce, _query, _wait_grants_applied, settings

pytestmark = pytest.mark.integration
__all__ = ["settings"]  # a fixture shared with test_pipeline

DAY = 86_400_000
T0 = Generator.start_ms
ACCOUNTS = ["acct/1", "sp ace 2", "pct%3", "ünï©ødé-4", "a?b#5", "plus+6", "semi;7", "plain-8", "plain-9",
            "plain-10"]
PER_PHASE = 70  # events per account and phase
# Phase 1 runs under policy A (the shipped thresholds, floor 1, 7-day warning); phase 2 under B.
POLICY_B = {"version": "bal-scenario-b", "usage_thresholds_pct": [25, 50, 90], "low_balance_floor": "0.5",
            "expiry_warning_days": 3}


def _policy_file(tmp_path: Path, version: str, balances: dict[str, Any] | None) -> Path:
    text = POLICY.read_text()
    lines = []
    for line in text.splitlines():
        if line.startswith("version ="):
            line = f'version = "{version}"'
        elif balances and line.split("=")[0].strip() in balances:
            key = line.split("=")[0].strip()
            value = balances[key]
            line = f"{key} = {value!r}".replace("'", '"') if not isinstance(value, list) else f"{key} = {value}"
        lines.append(line)
    path = tmp_path / f"{version}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _events(seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per account PER_PHASE events in phase 1 (days 0-3) and in phase 2 (days 3.6-5), in time order."""
    gen = Generator(accounts=20, seed=seed, account_prefix="scn")
    raw = list(gen.events(2 * PER_PHASE * len(ACCOUNTS)))
    phases: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
    for i, ev in enumerate(raw):
        phase, k = divmod(i, PER_PHASE * len(ACCOUNTS))
        n, a = divmod(k, len(ACCOUNTS))
        start, span = (T0, 3 * DAY) if phase == 0 else (T0 + 3 * DAY + 14 * DAY // 10, 14 * DAY // 10)
        phases[phase].append({**ev, "account_id": ACCOUNTS[a], "event_id": f"scn-{phase}-{k}",
                              "occurred_at": start + n * span // PER_PHASE})
    return phases


def _grant(account: str, j: int, amount: int, granted: int, expires: int, priority: int) -> dict[str, Any]:
    return {"event_type": "ISSUED", "grant_id": f"g{j}:{account}", "account_id": account, "campaign": f"c{j}",
            "amount_micro": amount, "granted_at": granted, "expires_at": expires, "priority": priority,
            "occurred_at": granted, "reason": None}


def _grants(phase1: list[dict[str, Any]], phase2: list[dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                                                 list[dict[str, Any]]]:
    """g0 expires mid phase 1 (used up before it on some accounts, with credits left on others), g1
    lasts, g2 is issued between the phases; amounts are shares of each account's charges so that every
    account ends each phase on the subscription."""
    p = _policy()
    charged: Counter[tuple[int, str]] = Counter()
    for phase, evs in enumerate((phase1, phase2)):
        for ev in evs:
            charged[(phase, ev["account_id"])] += int(price(ev, p)[2] / MICRO)
    first, mid = [], []
    for i, a in enumerate(ACCOUNTS):
        c1, c2 = charged[(0, a)], charged[(1, a)]
        first.append(_grant(a, 0, c1 * (3 if i % 2 else 1) // 5, T0 - DAY, T0 + 3 * DAY // 2, 0))
        first.append(_grant(a, 1, c1 // 10, T0 - 2 * DAY, T0 + 20 * DAY, 1))
        mid.append(_grant(a, 2, c2 * 2 // 5, T0 + 3 * DAY + DAY // 2, T0 + 6 * DAY, 0))
    return first, mid


def _highest_sent(pcts: set[int]) -> int:
    return max(pcts, default=0)


def _expected_ids(first: list[dict[str, Any]], mid: list[dict[str, Any]], after1: Expected,
                  after2: Expected) -> set[str]:
    """Written from docs/balances.md: each threshold of a grant once; thresholds a later policy adds
    below one the grant already announced are not announced (they are history); a fall below the
    floor per fall; an expiry warning once, for a grant still usable within the window."""
    a_pcts = [50, 80, 100]
    b_pcts = [*POLICY_B["usage_thresholds_pct"], 100]  # type: ignore[misc]
    ids: set[str] = set()
    for g in [*first, *mid]:
        gid, account, amount = g["grant_id"], g["account_id"], Decimal(g["amount_micro"]) * MICRO
        used1 = after1.grant_used.get(gid, Decimal(0)) if g in first else Decimal(0)
        used2 = after2.grant_used.get(gid, Decimal(0))
        sent1 = {p for p in a_pcts if used1 * 100 >= amount * p}
        sent2 = {p for p in b_pcts if used2 * 100 >= amount * p and p > _highest_sent(sent1)}
        for pct in sent1 | sent2:
            ids.add(f"{account}/GRANT_EXHAUSTED/{gid}" if pct == 100 else f"{account}/USAGE_THRESHOLD/{gid}/{pct}")
        if g["grant_id"].startswith(("g0:", "g2:")):  # within the window of its policy at its issue
            ids.add(f"{account}/GRANT_EXPIRING/{gid}")
    for account in ACCOUNTS:
        ids.add(f"{account}/LOW_BALANCE/1")
        ids.add(f"{account}/LOW_BALANCE/2")
    return ids


def _kill_during(producer: threading.Thread, crashy: Worker, rng: random.Random) -> int:
    kills = 0
    while producer.is_alive() or kills < 3:
        time.sleep(rng.uniform(0.4, 2.0))
        crashy.kill()
        kills += 1
        crashy.start()
    return kills


def _poll_lookups(url: str, stop: threading.Event, seen: Counter[int], seqs: dict[str, int],
                  regress: list[str]) -> None:
    """A service asking the worker that is never killed, during kills and rebalances: 200 or 503
    (retry), never another answer, and never a balance older than one already shown (the lookup
    answers from durable state). 0 counts a failed request."""
    i = 0
    while not stop.is_set():
        account = ACCOUNTS[i % len(ACCOUNTS)]
        try:
            status, body = _get(url + balance_path(account))
        except (OSError, ValueError):
            status, body = 0, {}
        seen[status] += 1
        if status == 200:
            seq = body["balance"]["balance_seq"]
            if seq < seqs.get(account, 0):
                regress.append(f"{account}: {seq} after {seqs[account]}")
            seqs[account] = max(seq, seqs.get(account, 0))
        i += 1
        time.sleep(0.02)


def test_balances_across_expiry_mid_stream_grants_resends_kills_and_a_policy_change(
        settings: Settings, workers: list[Worker], tmp_path: Path) -> None:
    rng = random.Random(7)
    phase1, phase2 = _events(17)
    first, mid = _grants(phase1, phase2)
    assert max(Counter(partition_of(a, settings.partitions) for a in ACCOUNTS).values()) >= 2
    policy_a = _policy_file(tmp_path, "bal-scenario-a", None)
    policy_b = _policy_file(tmp_path, str(POLICY_B["version"]), {k: v for k, v in POLICY_B.items() if k != "version"})
    # The workload does what it is meant to (checked before anything runs): every account ends each
    # phase on the subscription with nothing left, and starts each above its floor.
    after1, want = expected(phase1, first), expected(phase1 + phase2, first + mid)
    for account in ACCOUNTS:
        assert want.balances[account].subscription_funded > after1.balances[account].subscription_funded > 0
        assert after1.balances[account].total_remaining == want.balances[account].total_remaining == 0
        assert want.balances[account].grants[f"g0:{account}"][1] == "EXPIRED"
        start1 = sum(g["amount_micro"] for g in first if g["account_id"] == account)
        assert start1 >= 1_000_000 and next(g for g in mid if g["account_id"] == account)["amount_micro"] >= 500_000
    assert {want.balances[a].grants[f"g0:{a}"][0] > 0 for a in ACCOUNTS} == {True, False}
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers or "", settings))

    def start(policy: Path) -> tuple[Worker, Worker]:
        env = {"CREDITFLOW_POLICY_PATH": str(policy)}
        main = Worker(settings, "all", tmp_path, "main", **env).start()
        crashy = Worker(settings, "processor", tmp_path, "crashy", **env).start()
        workers.extend([main, crashy])
        return main, crashy

    # Phase 1, policy A: grants first, then events while the second processor is killed.
    main, crashy = start(policy_a)
    _produce(settings, first, [])
    _wait_grants_applied(settings, main)
    producer = threading.Thread(target=_produce, args=(settings, [], phase1, 600.0), daemon=True)
    producer.start()
    kills = _kill_during(producer, crashy, rng)
    wait_drained(settings, [main, crashy], timeout=300)
    for w in (main, crashy):
        assert w.stop() == 0, w.log_tail()
    workers.clear()

    # Phase 2, policy B: the mid-stream grants, then events and resends, lookups polled meanwhile.
    main, crashy = start(policy_b)
    _produce(settings, mid, [])
    _wait_grants_applied(settings, main)
    resent = rng.sample(phase1[len(phase1) // 2:], 40) + rng.sample(phase2, 40)
    feed = phase2[:len(phase2) // 2] + resent[:40] + phase2[len(phase2) // 2:] + resent[40:]
    wait_processors_own(settings, 2)
    main_url = next(w.url for w in running_workers(settings.data_dir) if w.pid == main.proc.pid)  # type: ignore[union-attr]
    stop, seen, seqs, regress = threading.Event(), Counter[int](), {}, []  # type: ignore[var-annotated]
    poller = threading.Thread(target=_poll_lookups, args=(main_url, stop, seen, seqs, regress), daemon=True)
    poller.start()
    producer = threading.Thread(target=_produce, args=(settings, [], feed, 600.0), daemon=True)
    producer.start()
    kills += _kill_during(producer, crashy, rng)
    wait_drained(settings, [main, crashy], timeout=300)
    stop.set()
    poller.join(timeout=60)
    assert set(seen) <= {200, 503} and seen[200] > 0, seen
    assert not regress, regress
    _wait_outputs_sunk(settings)

    # The lookup through both workers (one owns, one forwards), with URL-special account ids.
    wait_processors_own(settings, 2)
    live = [w.url for w in running_workers(settings.data_dir) if w.app_id == settings.app_id]
    for account in ACCOUNTS:
        for url in live:
            status, body = _get(url + balance_path(account))
            assert status == 200, (url, account, body)
            _assert_balance(body["balance"], want.balances[account], f"lookup via {url}")
            assert body["balance"]["policy_version"] == POLICY_B["version"]
    status, body = _get(live[0] + balance_path("nobody/ünknown %"))
    assert status == 404 and "nobody/ünknown %" in body["error"], body

    async def view() -> dict[str, Any]:
        async with BalanceView(settings) as v:
            await v.wait_caught_up(60)
            return {a: v.get(a) for a in ACCOUNTS}

    for account, rec in asyncio.run(view()).items():
        assert rec is not None, account
        _assert_balance(rec, want.balances[account], "topic")

    notes = _notifications_on_topic(settings)
    ids = {n["notification_id"] for n in notes}
    want_ids = _expected_ids(first, mid, after1, want)
    assert ids == want_ids, (sorted(ids - want_ids), sorted(want_ids - ids))
    copies = Counter(n["notification_id"] for n in notes)
    assert max(copies.values()) <= 1 + kills, copies.most_common(3)

    for w in (main, crashy):
        assert w.stop() == 0, w.log_tail()
    try:
        rows = _query(settings, "SELECT account_id, total_remaining_micro, grant_funded_micro, "
                                "subscription_funded_micro, grant_ids, grant_remaining_micro, grant_statuses "
                                "FROM v_credit_balances")
        assert sorted(r[0] for r in rows) == sorted(ACCOUNTS)
        for account, total, funded, sub, gids, remaining, statuses in rows:
            _assert_balance({"account_id": account, "total_remaining_micro": total, "grant_funded_micro": funded,
                             "subscription_funded_micro": sub,
                             "grants": [{"grant_id": i, "remaining_micro": r, "status": s}
                                        for i, r, s in zip(gids, remaining, statuses, strict=True)]},
                            want.balances[account], "clickhouse")
        stored = _query(settings, "SELECT notification_id, count() FROM credit_notifications FINAL "
                                  "GROUP BY notification_id")
        assert {i for i, _n in stored} == want_ids and all(n == 1 for _i, n in stored)
    finally:
        close(settings.resolved_clickhouse_url)
