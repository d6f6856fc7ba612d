"""CF-003 fast depletion: a new grant mostly spent within a day, or a brand-new account burning
heavily on day one."""

from __future__ import annotations

from typing import Any

from .base import (
    DAY_MS,
    HOUR_MS,
    MICRO,
    MINUTE_MS,
    PAID_PLANS,
    Cfg,
    Detector,
    Firing,
    Obs,
    State,
    credits_text,
    ramp,
    window_exposed,
    window_total,
)


class FastDepletion(Detector):
    id = "CF-003"
    revision = 1
    name = "Fast grant depletion"
    signal = ("A grant with at least 80% spent within `max_hours` of being granted, over at least "
              "`min_requests` requests (needs the CreditGrant event), or an account younger than a day "
              "(its first request within an hour of a grant) charged at least `new_account_micro`.")
    window = "grant's first `max_hours` hours; account's first 24 hours"
    counter_signal_doc = ("a paid plan (judged only `settle_minutes` after the grant ran out); usage "
                          "continued on the subscription after the grant ran out (a customer, not a farmer)")
    suggested_action = "Hold further grants for this account and review how the grant was obtained."
    defaults = {"max_hours": 24, "min_grant_micro": 2 * MICRO, "new_account_micro": 100 * MICRO,
                "settle_minutes": 60, "min_requests": 5, "min_score": "0.5"}

    def initial(self) -> State:
        # paid: subscription-funded charged micro so far; snap: gid -> paid at the time it hit 80%
        return {"paid": 0, "snap": {}, "day1": 0}

    def observe(self, state: State, obs: Obs, cfg: Cfg) -> None:
        s = self.slot(state)
        common = state["_"]
        charged = int(obs["charged_micro"])
        s["paid"] += charged - int(obs.get("grant_funded_micro") or 0)
        if common["first"] is not None and int(obs["occurred_at"]) - common["first"] < DAY_MS:
            s["day1"] += charged
        for gid, g in common["g"].items():
            if g["t80"] is not None and gid not in s["snap"]:
                s["snap"][gid] = s["paid"]
                if len(s["snap"]) > 16:
                    del s["snap"][next(iter(s["snap"]))]

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        s = self.slot(state)
        common = state["_"]
        max_ms = cfg["max_hours"] * HOUR_MS
        best: tuple[float, str, dict[str, Any]] | None = None
        paying = common.get("plan") in PAID_PLANS
        for gid, g in common["g"].items():
            # Only grants whose issue we saw: "new" is measured from granted_at, not from first use
            # (an old grant first used today is not a fresh grant). One huge request that empties a
            # tiny grant is not a pattern either, hence a minimum number of debits.
            if (g["t80"] is None or g["amt"] is None or g["gat"] is None or g["amt"] < cfg["min_grant_micro"]
                    or g.get("nd", 0) < cfg["min_requests"]):
                continue
            if paying and now_ms < max(g["t80"], g["exh"] or 0) + cfg["settle_minutes"] * MINUTE_MS:
                # A paying customer gets a moment's benefit of the doubt: whether usage carries on
                # on the subscription is the strongest counter-signal, and it needs a little time.
                continue
            elapsed = g["t80"] - g["gat"]
            if elapsed > max_ms:
                continue
            # 6x faster than the limit (4 hours by default) is as blatant as it gets.
            base = ramp(max_ms - elapsed, 0, max_ms * 5 / 6)
            if best is None or base > best[0]:
                best = (base, gid, g)
        plan = common.get("plan")
        counters: list[tuple[str, float]] = []
        if plan in PAID_PLANS:
            counters.append((f"{plan} plan (a paying customer)", 0.6))
        if best is not None:
            base, gid, g = best
            amount = int(g["amt"])
            after = s["paid"] - s["snap"].get(gid, s["paid"])
            if after * 5 >= amount:
                counters.append(
                    (f"kept using on the subscription after the grant ({credits_text(after)} credits)", 0.5))
            start = int(g["gat"])
            t80 = int(g["t80"])
            spent = int(g["sp"])
            return self.fire(
                state, cfg, base=base, counters=counters,
                observed=f"{spent * 100 // amount}% of the grant spent in {(t80 - start) / HOUR_MS:.1f}h",
                limit=f"80% within {cfg['max_hours']}h",
                window_start=start, window_end=t80,
                counts={"grant_micro": amount, "spent_micro": spent},
                # What the grant paid plus the multiplier subsidy on top of it.
                exposed_micro=spent + window_total(common, "sub"),
                grant_id=gid,
            )
        first = common["first"]
        # "Brand-new" needs evidence of a sign-up, not merely our first sight of the account (every
        # account looks new right after the pipeline starts): a grant issued shortly before its first use.
        signup = first is not None and any(
            g["gat"] is not None and 0 <= first - g["gat"] <= HOUR_MS for g in common["g"].values())
        if signup and now_ms - first < DAY_MS and s["day1"] >= cfg["new_account_micro"]:
            return self.fire(
                state, cfg, base=ramp(s["day1"], cfg["new_account_micro"], 3 * cfg["new_account_micro"]),
                counters=counters,
                observed=f"{credits_text(s['day1'])} credits charged on the account's first day",
                limit=credits_text(cfg["new_account_micro"]),
                window_start=first, window_end=now_ms, counts={"events": common["n"]},
                exposed_micro=window_exposed(common),
            )
        return None


DETECTOR = FastDepletion()
