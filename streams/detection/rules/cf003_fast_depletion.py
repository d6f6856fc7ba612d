"""CF-003 fast depletion: a new grant mostly spent within a day, or a brand-new account burning
through requests on day one at many times its plan cohort's daily rate."""

from __future__ import annotations

from typing import Any

from .base import (
    HOUR_MS,
    MICRO,
    MINUTE_MS,
    PAID_PLANS,
    WEIGHTED,
    Cfg,
    Detector,
    Firing,
    Obs,
    State,
    credits_text,
    is_new_account,
    ramp,
    window_exposed,
    window_total,
)


class FastDepletion(Detector):
    id = "CF-003"
    revision = 2
    name = "Fast grant depletion"
    signal = ("A grant with at least 80% spent within `max_hours` of being granted, over at least "
              "`min_requests` requests (needs the CreditGrant event; MEDIUM at most under "
              "`confident_requests`), or a brand-new account (its first "
              "request within two hours of a grant) sending, in its first `max_hours` hours, at least "
              "`min_day1_requests` requests and `min_cohort_ratio` x its plan cohort's daily requests "
              "(`cohort_daily_requests`, per plan as `cohort_daily_requests_<PLAN>`), mostly in multiplied "
              "categories. Requests, not credits: the same on a cheap or an unpriced model.")
    window = "grant's first `max_hours` hours; account's first `max_hours` hours"
    counter_signal_doc = ("a paid plan (judged only `settle_minutes` after the grant ran out); usage "
                          "continued on the subscription after the grant ran out (a customer, not a farmer); "
                          "mostly plain chat on day one")
    suggested_action = "Hold further grants for this account and review how the grant was obtained."
    defaults = {"max_hours": 24, "min_grant_micro": 2 * MICRO, "settle_minutes": 60, "min_requests": 5,
                "confident_requests": 20, "min_day1_requests": 25, "full_day1_requests": 100,
                "cohort_daily_requests": 8, "min_cohort_ratio": 3, "min_weighted_share": "0.9", "min_score": "0.5"}

    def initial(self) -> State:
        # paid: subscription-funded charged micro so far; snap: gid -> paid at the time it hit 80%
        # day1/day1w: requests / requests in multiplied categories in the account's first max_hours;
        # n/w: the same over recent requests (halved every 512)
        return {"paid": 0, "snap": {}, "day1": 0, "day1w": 0}

    def observe(self, state: State, obs: Obs, cfg: Cfg) -> None:
        s = self.slot(state)
        common = state["_"]
        charged = int(obs["charged_micro"])
        s["paid"] += charged - int(obs.get("grant_funded_micro") or 0)
        s["n"] = s.get("n", 0) + 1
        s["w"] = s.get("w", 0) + (obs["category"] in WEIGHTED)
        if s["n"] >= 512:  # halving keeps the share recent
            s["n"] //= 2
            s["w"] //= 2
        if common["first"] is not None and int(obs["occurred_at"]) - common["first"] < cfg["max_hours"] * HOUR_MS:
            s["day1"] += 1
            s["day1w"] += obs["category"] in WEIGHTED
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
            if g.get("nd", 0) < cfg["confident_requests"]:
                # A small grant emptied by a handful of requests: a person could do that; MEDIUM at most.
                base = min(base, 0.74)
            if best is None or base > best[0]:
                best = (base, gid, g)
        counters: list[tuple[str, float]] = []
        if common.get("plan") in PAID_PLANS:
            counters.append((f"{common.get('plan')} plan (a paying customer)", 0.45))
        if best is not None:
            base, gid, g = best
            amount = int(g["amt"])
            after = s["paid"] - s["snap"].get(gid, s["paid"])
            if after * 5 >= amount:
                counters.append(
                    (f"kept using on the subscription after the grant ({credits_text(after)} credits)", 0.5))
            n, w = s.get("n", 0), s.get("w", 0)
            if n and w < n * cfg["min_weighted_share"]:
                # A person tries everything, chat included; a farmer sends what multipliers pay for.
                counters.append((f"only {w} of {n} recent requests in multiplied categories", 0.45))
            start = int(g["gat"])
            t80 = int(g["t80"])
            spent = int(g["sp"])
            return self.fire(
                state, cfg, base=base, counters=counters,
                observed=f"{spent * 100 // amount}% of the grant spent in {(t80 - start) / HOUR_MS:.1f}h",
                limit=f"80% within {cfg['max_hours']}h",
                value=(t80 - start) / HOUR_MS, threshold=cfg["max_hours"],
                window_start=start, window_end=t80,
                counts={"grant_micro": amount, "spent_micro": spent},
                # What the grant paid plus the multiplier subsidy on top of it.
                exposed_micro=spent + window_total(common, "sub"),
                grant_id=gid,
            )
        first = common["first"]
        # "Brand-new" needs evidence of a sign-up, not merely our first sight of the account (every
        # account looks new right after the pipeline starts): a grant issued shortly before its first use.
        if first is None or now_ms - first >= max_ms or not is_new_account(common):
            return None
        n = s["day1"]
        plan = common.get("plan")
        cohort = cfg.get(f"cohort_daily_requests_{plan}", cfg["cohort_daily_requests"])
        if n < cfg["min_day1_requests"] or n < cfg["min_cohort_ratio"] * cohort:
            return None
        if s["day1w"] < n * cfg["min_weighted_share"]:
            # People try every feature but chat too; a farmer sends what the multipliers pay for.
            counters.append((f"only {s['day1w']} of {n} requests in multiplied categories", 0.45))
        return self.fire(
            state, cfg, base=ramp(n, cfg["min_day1_requests"], cfg["full_day1_requests"]),
            counters=counters,
            observed=f"{n} requests in the account's first {(now_ms - first) / HOUR_MS:.1f}h "
                     f"({n / cohort:.1f}x the {plan} cohort's daily {cohort})",
            limit=f"{cfg['min_day1_requests']} requests and {cfg['min_cohort_ratio']}x cohort",
            value=n, threshold=max(cfg["min_day1_requests"], cfg["min_cohort_ratio"] * cohort),
            window_start=first, window_end=now_ms,
            counts={"requests": n, "weighted_requests": s["day1w"], "cohort_daily_requests": int(cohort)},
            exposed_micro=window_exposed(common),
        )


DETECTOR = FastDepletion()
