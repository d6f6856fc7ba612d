"""CF-004 multi-account farming: many grant-holding accounts behind one device or payment
fingerprint, above all freshly signed-up ones. Never keyed on IP alone: households and offices share
IPs."""

from __future__ import annotations

import msgspec

from .base import (
    DAY_MS,
    ORG_PLANS,
    Cfg,
    Detector,
    Firing,
    Obs,
    RuleState,
    State,
    common_of,
    ramp,
)

ACCOUNT_CAP = 64


class FarmedAccount(msgspec.Struct, array_like=True, gc=False):
    """One account seen on the fingerprint (a JSON array on the wire: there are up to 64 of them)."""

    last_seen_at: int
    grant_funded_micro: int  # what the programme paid for on this account, with ...
    subsidy_micro: int  # ... the multiplier subsidy of that grant-funded usage
    plan: str | None  # team/enterprise accounts on one device are a company pool
    first_seen_at: int  # an evaluation at t counts only accounts first seen at or before t
    new_account: bool  # a fresh sign-up (see ``base.is_new_account``)


class FarmingState(RuleState):
    accounts: dict[str, FarmedAccount] = msgspec.field(name="a", default_factory=dict)  # account id -> entry


class Farming(Detector[FarmingState]):
    id = "CF-004"
    state_type = FarmingState
    revision = 2
    name = "Multi-account farming"
    entity_types = ("device", "payment")
    signal = ("At least `min_new_accounts` freshly signed-up accounts (first request within two hours of "
              "a grant), or at least `min_accounts` accounts of any age, drawing on promotional grants "
              "from one device or payment fingerprint within the window. Only accounts first seen at or "
              "before the evaluation's event time count.")
    window = "rolling `window_days` days; up to 64 accounts remembered per fingerprint"
    counter_signal_doc = ("most of the accounts are on team/enterprise plans (a company device pool or "
                          "corporate card)")
    suggested_action = "Link the accounts, freeze their grants and review the fingerprint's sign-ups."
    defaults = {"min_new_accounts": 3, "min_accounts": 5, "full_accounts": 10, "window_days": 7,
                "min_score": "0.5"}

    def observe(self, state: State, obs: Obs, cfg: Cfg) -> None:
        s = self.slot(state)
        acct = obs["account_id"]
        t = int(obs["occurred_at"])
        gf = int(obs.get("grant_funded_micro") or 0)
        entry = s.accounts.get(acct)
        if entry is None:
            entry = s.accounts[acct] = FarmedAccount(t, 0, 0, obs.get("plan"), t, bool(obs.get("new_account")))
            if len(s.accounts) > ACCOUNT_CAP:
                del s.accounts[min(s.accounts, key=lambda k: s.accounts[k].last_seen_at)]
        entry.last_seen_at = max(entry.last_seen_at, t)
        entry.first_seen_at = min(entry.first_seen_at, t)
        entry.plan = obs.get("plan")
        entry.new_account = entry.new_account or bool(obs.get("new_account"))
        if gf:
            entry.grant_funded_micro += gf
            entry.subsidy_micro += int(obs["list_micro"]) - int(obs["charged_micro"])

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        s = self.slot(state)
        common = common_of(state)
        since = now_ms - cfg["window_days"] * DAY_MS
        granted = [(a, e) for a, e in s.accounts.items()
                   if e.grant_funded_micro > 0 and e.last_seen_at >= since and e.first_seen_at <= now_ms]
        n = len(granted)
        new = sum(1 for _, e in granted if e.new_account)
        if new < cfg["min_new_accounts"] and n < cfg["min_accounts"]:
            return None
        # Fresh sign-ups count as much as a whole ring of old accounts would.
        base = max(ramp(n, cfg["min_accounts"], cfg["full_accounts"]) if n >= cfg["min_accounts"] else 0.0,
                   ramp(new, cfg["min_new_accounts"], cfg["full_accounts"] - 2) if new >= cfg["min_new_accounts"]
                   else 0.0)
        org = sum(1 for _, e in granted if e.plan in ORG_PLANS)
        counters: list[tuple[str, float]] = []
        if org * 2 >= n:
            counters.append((f"{org} of {n} accounts on team/enterprise plans (shared corporate "
                             f"{common.kind})", 0.4))
        granted.sort(key=lambda ae: -ae[1].grant_funded_micro)
        return self.fire(
            state, cfg, base=base, counters=counters,
            observed=f"{n} grant-funded accounts ({new} new) on one {common.kind} fingerprint",
            limit=f"{cfg['min_new_accounts']} new or {cfg['min_accounts']} accounts",
            value=new if new >= cfg["min_new_accounts"] else n,
            threshold=cfg["min_new_accounts"] if new >= cfg["min_new_accounts"] else cfg["min_accounts"],
            window_start=since, window_end=now_ms,
            counts={"accounts": n, "new_accounts": new, "accounts_seen": len(s.accounts), "org_plan_accounts": org},
            exposed_micro=sum(e.grant_funded_micro + e.subsidy_micro for _, e in granted),
            entity_type=common.kind or "", entity_id=common.entity_id,
            related=tuple(f"account:{a}" for a, _ in granted[:20]),
        )


DETECTOR = Farming()
