"""CF-004 multi-account farming: many grant-holding accounts behind one device or payment
fingerprint. Never keyed on IP alone: households and offices share IPs."""

from __future__ import annotations

from .base import DAY_MS, ORG_PLANS, Cfg, Detector, Firing, Obs, State, ramp

ACCOUNT_CAP = 64


class Farming(Detector):
    id = "CF-004"
    revision = 1
    name = "Multi-account farming"
    entity_types = ("device", "payment")
    signal = ("At least `min_accounts` distinct accounts drawing on promotional grants from one device or "
              "payment fingerprint within the window.")
    window = "rolling `window_days` days; up to 64 accounts remembered per fingerprint"
    counter_signal_doc = ("most of the accounts are on team/enterprise plans (a company device pool or "
                          "corporate card)")
    suggested_action = "Link the accounts, freeze their grants and review the fingerprint's sign-ups."
    defaults = {"min_accounts": 4, "full_accounts": 10, "window_days": 7, "min_score": "0.5"}

    def initial(self) -> State:
        # a: account -> [last_seen_ms, grant_funded_micro, subsidy_micro_on_granted, plan]
        return {"a": {}}

    def observe(self, state: State, obs: Obs, cfg: Cfg) -> None:
        s = self.slot(state)
        acct = obs["account_id"]
        t = int(obs["occurred_at"])
        gf = int(obs.get("grant_funded_micro") or 0)
        entry = s["a"].get(acct)
        if entry is None:
            entry = s["a"][acct] = [t, 0, 0, obs.get("plan")]
            if len(s["a"]) > ACCOUNT_CAP:
                del s["a"][min(s["a"], key=lambda k: s["a"][k][0])]
        entry[0] = max(entry[0], t)
        entry[3] = obs.get("plan")
        if gf:
            entry[1] += gf
            entry[2] += int(obs["list_micro"]) - int(obs["charged_micro"])

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        s = self.slot(state)
        common = state["_"]
        since = now_ms - cfg["window_days"] * DAY_MS
        granted = [(a, e) for a, e in s["a"].items() if e[1] > 0 and e[0] >= since]
        n = len(granted)
        if n < cfg["min_accounts"]:
            return None
        org = sum(1 for _, e in granted if e[3] in ORG_PLANS)
        counters: list[tuple[str, float]] = []
        if org * 2 >= n:
            counters.append((f"{org} of {n} accounts on team/enterprise plans (shared corporate "
                             f"{common['kind']})", 0.4))
        granted.sort(key=lambda ae: -ae[1][1])
        return self.fire(
            state, cfg,
            base=ramp(n, cfg["min_accounts"], cfg["full_accounts"]),
            counters=counters,
            observed=f"{n} grant-funded accounts on one {common['kind']} fingerprint",
            limit=str(cfg["min_accounts"]),
            window_start=since, window_end=now_ms,
            counts={"accounts": n, "accounts_seen": len(s["a"]), "org_plan_accounts": org},
            exposed_micro=sum(e[1] + e[2] for _, e in granted),
            entity_type=common["kind"], entity_id=common["id"],
            related=tuple(f"account:{a}" for a, _ in granted[:20]),
        )


DETECTOR = Farming()
