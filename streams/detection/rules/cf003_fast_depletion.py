"""CF-003 fast depletion: a new grant mostly spent within a day, or a brand-new account burning
through requests on day one at many times its plan cohort's daily rate."""

from __future__ import annotations

import msgspec

from .base import (
    HOUR_MS,
    MICRO,
    MINUTE_MS,
    PAID_PLANS,
    WEIGHTED,
    Cfg,
    Detector,
    Firing,
    GrantSeen,
    Obs,
    RuleState,
    State,
    common_of,
    credits_text,
    is_new_account,
    ramp,
    window_exposed,
    window_total,
)


class FastDepletionState(RuleState):
    # Subscription-funded charged micro-credits so far, and its value when each grant reached 80%:
    # usage carrying on on the subscription after a grant ran out is a customer, not a farmer.
    subscription_paid_micro: int = msgspec.field(name="paid", default=0)
    paid_at_80_percent: dict[str, int] = msgspec.field(name="snap", default_factory=dict)  # grant id -> paid
    # Requests, and requests in multiplied categories, in the account's first ``max_hours``.
    day1_requests: int = msgspec.field(name="day1", default=0)
    day1_weighted_requests: int = msgspec.field(name="day1w", default=0)
    # The same over recent requests (both halved every 512): a farmer sends what multipliers pay for.
    recent_requests: int = msgspec.field(name="n", default=0)
    recent_weighted_requests: int = msgspec.field(name="w", default=0)


class FastDepletion(Detector[FastDepletionState]):
    id = "CF-003"
    state_type = FastDepletionState
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

    def observe(self, state: State, obs: Obs, cfg: Cfg) -> None:
        s = self.slot(state)
        common = common_of(state)
        charged = int(obs["charged_micro"])
        s.subscription_paid_micro += charged - int(obs.get("grant_funded_micro") or 0)
        s.recent_requests += 1
        s.recent_weighted_requests += obs["category"] in WEIGHTED
        if s.recent_requests >= 512:  # halving keeps the share recent
            s.recent_requests //= 2
            s.recent_weighted_requests //= 2
        first = common.first_event_at
        if first is not None and int(obs["occurred_at"]) - first < cfg["max_hours"] * HOUR_MS:
            s.day1_requests += 1
            s.day1_weighted_requests += obs["category"] in WEIGHTED
        for gid, g in common.grants.items():
            if g.reached_80_percent_at is not None and gid not in s.paid_at_80_percent:
                s.paid_at_80_percent[gid] = s.subscription_paid_micro
                if len(s.paid_at_80_percent) > 16:
                    del s.paid_at_80_percent[next(iter(s.paid_at_80_percent))]

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        s = self.slot(state)
        common = common_of(state)
        max_ms = cfg["max_hours"] * HOUR_MS
        best: tuple[float, str, GrantSeen] | None = None
        paying = common.plan in PAID_PLANS
        for gid, g in common.grants.items():
            # Only grants whose issue we saw: "new" is measured from granted_at, not from first use
            # (an old grant first used today is not a fresh grant). One huge request that empties a
            # tiny grant is not a pattern either, hence a minimum number of debits.
            t80 = g.reached_80_percent_at
            if (t80 is None or g.amount_micro is None or g.granted_at is None
                    or g.amount_micro < cfg["min_grant_micro"] or g.debits < cfg["min_requests"]):
                continue
            if paying and now_ms < max(t80, g.exhausted_at or 0) + cfg["settle_minutes"] * MINUTE_MS:
                # A paying customer gets a moment's benefit of the doubt: whether usage carries on
                # on the subscription is the strongest counter-signal, and it needs a little time.
                continue
            elapsed = t80 - g.granted_at
            if elapsed > max_ms:
                continue
            # 6x faster than the limit (4 hours by default) is as blatant as it gets.
            base = ramp(max_ms - elapsed, 0, max_ms * 5 / 6)
            if g.debits < cfg["confident_requests"]:
                # A small grant emptied by a handful of requests: a person could do that; MEDIUM at most.
                base = min(base, 0.74)
            if best is None or base > best[0]:
                best = (base, gid, g)
        counters: list[tuple[str, float]] = []
        if common.plan in PAID_PLANS:
            counters.append((f"{common.plan} plan (a paying customer)", 0.45))
        if best is not None:
            base, gid, g = best
            amount = int(g.amount_micro)  # type: ignore[arg-type]  # the loop kept only known sizes
            after = s.subscription_paid_micro - s.paid_at_80_percent.get(gid, s.subscription_paid_micro)
            if after * 5 >= amount:
                counters.append(
                    (f"kept using on the subscription after the grant ({credits_text(after)} credits)", 0.5))
            n, w = s.recent_requests, s.recent_weighted_requests
            if n and w < n * cfg["min_weighted_share"]:
                # A person tries everything, chat included; a farmer sends what multipliers pay for.
                counters.append((f"only {w} of {n} recent requests in multiplied categories", 0.45))
            start = int(g.granted_at)  # type: ignore[arg-type]  # likewise
            t80 = int(g.reached_80_percent_at)  # type: ignore[arg-type]
            spent = int(g.spent_micro)
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
        first = common.first_event_at
        # "Brand-new" needs evidence of a sign-up, not merely our first sight of the account (every
        # account looks new right after the pipeline starts): a grant issued shortly before its first use.
        if first is None or now_ms - first >= max_ms or not is_new_account(common):
            return None
        n = s.day1_requests
        plan = common.plan
        cohort = cfg.get(f"cohort_daily_requests_{plan}", cfg["cohort_daily_requests"])
        if n < cfg["min_day1_requests"] or n < cfg["min_cohort_ratio"] * cohort:
            return None
        if s.day1_weighted_requests < n * cfg["min_weighted_share"]:
            # People try every feature but chat too; a farmer sends what the multipliers pay for.
            counters.append((f"only {s.day1_weighted_requests} of {n} requests in multiplied categories", 0.45))
        return self.fire(
            state, cfg, base=ramp(n, cfg["min_day1_requests"], cfg["full_day1_requests"]),
            counters=counters,
            observed=f"{n} requests in the account's first {(now_ms - first) / HOUR_MS:.1f}h "
                     f"({n / cohort:.1f}x the {plan} cohort's daily {cohort})",
            limit=f"{cfg['min_day1_requests']} requests and {cfg['min_cohort_ratio']}x cohort",
            value=n, threshold=max(cfg["min_day1_requests"], cfg["min_cohort_ratio"] * cohort),
            window_start=first, window_end=now_ms,
            counts={"requests": n, "weighted_requests": s.day1_weighted_requests, "cohort_daily_requests": int(cohort)},
            exposed_micro=window_exposed(common),
        )


DETECTOR = FastDepletion()
