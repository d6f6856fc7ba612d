"""CF-004 multi-account farming: many grant-holding accounts behind one device or payment
fingerprint, above all freshly signed-up ones. Never keyed on IP alone: households and offices share
IPs."""

from __future__ import annotations

from .base import DAY_MS, ORG_PLANS, Cfg, Detector, Firing, Obs, State, ramp

ACCOUNT_CAP = 64
# Entry of one account: [last_seen_ms, grant_funded_micro, subsidy_micro, plan, first_seen_ms, new_account]
LAST, FUNDED, SUBSIDY, PLAN, FIRST, NEW = range(6)


class Farming(Detector):
    id = "CF-004"
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

    def initial(self) -> State:
        return {"a": {}}

    def observe(self, state: State, obs: Obs, cfg: Cfg) -> None:
        s = self.slot(state)
        acct = obs["account_id"]
        t = int(obs["occurred_at"])
        gf = int(obs.get("grant_funded_micro") or 0)
        entry = s["a"].get(acct)
        if entry is None:
            entry = s["a"][acct] = [t, 0, 0, obs.get("plan"), t, bool(obs.get("new_account"))]
            if len(s["a"]) > ACCOUNT_CAP:
                del s["a"][min(s["a"], key=lambda k: s["a"][k][LAST])]
        entry[LAST] = max(entry[LAST], t)
        entry[FIRST] = min(entry[FIRST], t)
        entry[PLAN] = obs.get("plan")
        entry[NEW] = entry[NEW] or bool(obs.get("new_account"))
        if gf:
            entry[FUNDED] += gf
            entry[SUBSIDY] += int(obs["list_micro"]) - int(obs["charged_micro"])

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        s = self.slot(state)
        common = state["_"]
        since = now_ms - cfg["window_days"] * DAY_MS
        granted = [(a, e) for a, e in s["a"].items() if e[FUNDED] > 0 and e[LAST] >= since and e[FIRST] <= now_ms]
        n = len(granted)
        new = sum(1 for _, e in granted if e[NEW])
        if new < cfg["min_new_accounts"] and n < cfg["min_accounts"]:
            return None
        # Fresh sign-ups count as much as a whole ring of old accounts would.
        base = max(ramp(n, cfg["min_accounts"], cfg["full_accounts"]) if n >= cfg["min_accounts"] else 0.0,
                   ramp(new, cfg["min_new_accounts"], cfg["full_accounts"] - 2) if new >= cfg["min_new_accounts"]
                   else 0.0)
        org = sum(1 for _, e in granted if e[PLAN] in ORG_PLANS)
        counters: list[tuple[str, float]] = []
        if org * 2 >= n:
            counters.append((f"{org} of {n} accounts on team/enterprise plans (shared corporate "
                             f"{common['kind']})", 0.4))
        granted.sort(key=lambda ae: -ae[1][FUNDED])
        return self.fire(
            state, cfg, base=base, counters=counters,
            observed=f"{n} grant-funded accounts ({new} new) on one {common['kind']} fingerprint",
            limit=f"{cfg['min_new_accounts']} new or {cfg['min_accounts']} accounts",
            value=new if new >= cfg["min_new_accounts"] else n,
            threshold=cfg["min_new_accounts"] if new >= cfg["min_new_accounts"] else cfg["min_accounts"],
            window_start=since, window_end=now_ms,
            counts={"accounts": n, "new_accounts": new, "accounts_seen": len(s["a"]), "org_plan_accounts": org},
            exposed_micro=sum(e[FUNDED] + e[SUBSIDY] for _, e in granted),
            entity_type=common["kind"], entity_id=common["id"],
            related=tuple(f"account:{a}" for a, _ in granted[:20]),
        )


DETECTOR = Farming()
