"""CF-005 trial cycling: a fresh grant appears on a device/payment fingerprint whose earlier grant,
held by another account, was exhausted."""

from __future__ import annotations

from .base import DAY_MS, ORG_PLANS, Cfg, Detector, Firing, Obs, State, ramp, window_exposed


class TrialCycling(Detector):
    id = "CF-005"
    revision = 1
    name = "Trial cycling"
    entity_types = ("device", "payment")
    signal = ("A grant first used on a fingerprint after a grant of a different account on the same "
              "fingerprint was exhausted; `min_cycles` such hand-overs fire.")
    window = "rolling `window_days` days; up to 32 grants and 16 exhaustions per fingerprint"
    counter_signal_doc = ("team/enterprise plans (shared corporate hardware); a long gap (> `long_gap_days`) "
                          "between the exhaustion and the next grant")
    suggested_action = "Stop issuing trial grants to this fingerprint; link and review the accounts."
    defaults = {"min_cycles": 1, "full_cycles": 3, "window_days": 30, "long_gap_days": 14, "min_score": "0.5"}

    def initial(self) -> State:
        # gr: grant -> [account, first_used_ms]; ex: [[account, grant, exhausted_ms]];
        # cy: [[new_account, new_grant, previous_account, at_ms, gap_ms, plan]]
        return {"gr": {}, "ex": [], "cy": []}

    def observe(self, state: State, obs: Obs, cfg: Cfg) -> None:
        debits = obs.get("debits")
        if not debits:
            return
        s = self.slot(state)
        acct = obs["account_id"]
        t = int(obs["occurred_at"])
        for gid, _amount, balance in debits:
            if gid not in s["gr"]:
                s["gr"][gid] = [acct, t]
                if len(s["gr"]) > 32:
                    del s["gr"][min(s["gr"], key=lambda k: s["gr"][k][1])]
                prior = [e for e in s["ex"] if e[0] != acct and e[2] <= t]
                if prior:
                    last = max(prior, key=lambda e: e[2])
                    s["cy"].append([acct, gid, last[0], t, t - last[2], obs.get("plan")])
                    if len(s["cy"]) > 16:
                        del s["cy"][0]
            if int(balance) == 0 and not any(e[1] == gid for e in s["ex"]):
                s["ex"].append([acct, gid, t])
                if len(s["ex"]) > 16:
                    del s["ex"][0]

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        s = self.slot(state)
        common = state["_"]
        since = now_ms - cfg["window_days"] * DAY_MS
        cycles = [c for c in s["cy"] if c[3] >= since]
        if len(cycles) < cfg["min_cycles"]:
            return None
        counters: list[tuple[str, float]] = []
        if sum(1 for c in cycles if c[5] in ORG_PLANS) * 2 >= len(cycles):
            counters.append(("new grants on team/enterprise accounts (shared corporate hardware)", 0.4))
        long_gap = cfg["long_gap_days"] * DAY_MS
        if all(c[4] > long_gap for c in cycles):
            counters.append((f"every new grant came more than {cfg['long_gap_days']} days after exhaustion",
                             0.6))
        accounts: list[str] = []
        for c in cycles:
            for a in (c[2], c[0]):
                if a not in accounts:
                    accounts.append(a)
        return self.fire(
            state, cfg,
            base=ramp(len(cycles), cfg["min_cycles"], cfg["full_cycles"]),
            counters=counters,
            observed=f"{len(cycles)} grant hand-overs after exhaustion across {len(accounts)} accounts",
            limit=str(cfg["min_cycles"]),
            window_start=min(c[3] - c[4] for c in cycles), window_end=now_ms,
            counts={"cycles": len(cycles), "accounts": len(accounts), "grants_seen": len(s["gr"])},
            exposed_micro=window_exposed(common),
            entity_type=common["kind"], entity_id=common["id"],
            related=tuple(f"account:{a}" for a in accounts[:20]),
            grant_id=cycles[-1][1],
        )


DETECTOR = TrialCycling()
