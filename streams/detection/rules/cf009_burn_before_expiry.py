"""CF-009 burn before expiry: in a grant's last days, grant-funded requests (or spend) far above the
account's own daily baseline, concentrated in high-multiplier categories."""

from __future__ import annotations

import msgspec

from .base import (
    DAY_MS,
    HOUR_MS,
    WEIGHTED,
    Cfg,
    Detector,
    Firing,
    Obs,
    RuleState,
    State,
    common_of,
    credits_text,
    plan_counters,
    ramp,
    ratio_text,
)


class FinalWindow(msgspec.Struct, array_like=True, gc=False):
    """A grant's usage in its final days (a JSON array on the wire)."""

    spend_micro: int
    weighted_spend_micro: int  # in multiplied categories: burning credits vs gaming multipliers
    first_at: int  # the window's first grant-funded request (the oldest window is evicted first)
    expires_at: int
    requests: int
    weighted_requests: int


class BurnBeforeExpiryState(RuleState):
    # The baseline of earlier days (EWMA alpha 1/4, empty days included), without final-window or
    # flagged traffic: day is the current event-time day, whose figures fold in when it is over.
    day: int | None = msgspec.field(name="d", default=None)
    day_charged_micro: int = msgspec.field(name="dc", default=0)
    day_requests: int = msgspec.field(name="dn", default=0)
    baseline_micro: int = msgspec.field(name="base", default=0)  # EWMA micro-credits per day
    baseline_milli_requests: int = msgspec.field(name="basen", default=0)  # EWMA requests per day x 1000
    active_days: int = msgspec.field(name="act", default=0)  # days with baseline traffic folded
    final_windows: dict[str, FinalWindow] = msgspec.field(name="fin", default_factory=dict)  # grant id -> window


class BurnBeforeExpiry(Detector[BurnBeforeExpiryState]):
    id = "CF-009"
    state_type = BurnBeforeExpiryState
    revision = 2
    name = "Burn before expiry"
    signal = ("In a grant's last `final_days` days, at least `min_requests` grant-funded requests, and either "
              "their number per day is at least `min_ratio` x the account's EWMA daily requests (floored at "
              "`floor_requests`), or their credits per day at least `min_ratio` x its EWMA daily spend "
              "(floored at `floor_requests` baseline-priced requests), after `min_active_days` active days "
              "of baseline. A burst younger than `min_hours` is measured over `min_hours`. Floors in "
              "requests: the same on a cheap or an unpriced model.")
    window = "the grant's last `final_days` days; baselines = EWMA of earlier days (alpha 1/4)"
    counter_signal_doc = ("the burst is mostly plain 1.0x chat (using up credits, not gaming multipliers); "
                          "a paid plan, above all a team/enterprise one (month-end batch jobs); mostly "
                          "subscription-funded usage")
    suggested_action = "Review the final-days usage; consider expiring promotional grants more gradually."
    defaults = {"final_days": 2, "min_ratio": 4, "full_ratio": 20, "floor_requests": 6, "min_requests": 20,
                "min_hours": 12, "min_active_days": 2, "min_weighted_share": "0.6", "min_score": "0.5"}

    def observe(self, state: State, obs: Obs, cfg: Cfg) -> None:
        s = self.slot(state)
        common = common_of(state)
        t = int(obs["occurred_at"])
        day = t // DAY_MS
        if s.day is None:
            s.day = day
        elif day > s.day:
            self._fold(s, day)
        final_ms = cfg["final_days"] * DAY_MS
        weighted = obs["category"] in WEIGHTED
        in_final = False
        for gid, amount, _balance in obs.get("debits") or ():
            g = common.grants.get(gid)
            exp = g.expires_at if g else None
            if exp is None or not exp - final_ms <= t < exp:
                continue
            in_final = True
            f = s.final_windows.get(gid)
            if f is None:
                f = s.final_windows[gid] = FinalWindow(0, 0, t, exp, 0, 0)
                if len(s.final_windows) > 8:
                    del s.final_windows[min(s.final_windows, key=lambda k: s.final_windows[k].first_at)]
            f.spend_micro += int(amount)
            f.requests += 1
            if weighted:
                f.weighted_spend_micro += int(amount)
                f.weighted_requests += 1
        # Final-window and flagged traffic must not teach the baseline that bursts are normal.
        if not in_final and common.flagged_until <= t:
            s.day_charged_micro += int(obs["charged_micro"])
            s.day_requests += 1

    @staticmethod
    def _fold(s: BurnBeforeExpiryState, day: int) -> None:
        base, basen = s.baseline_micro, s.baseline_milli_requests
        if s.day_charged_micro > 0 or s.day_requests > 0:
            s.active_days += 1
        base += (s.day_charged_micro - base) // 4
        basen += (s.day_requests * 1000 - basen) // 4
        for _ in range(min(day - s.day - 1, 14)):  # type: ignore[operator]  # set before any fold
            base -= base // 4  # empty days decay the baselines too
            basen -= basen // 4
        s.baseline_micro, s.baseline_milli_requests = base, basen
        s.day_charged_micro = s.day_requests = 0
        s.day = day

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        s = self.slot(state)
        if s.active_days < cfg["min_active_days"] or not s.final_windows:
            return None
        base_n = max(s.baseline_milli_requests / 1000, cfg["floor_requests"])
        # The spend baseline floored at the same number of requests at the baseline's own average price.
        base_micro, base_milli = s.baseline_micro, s.baseline_milli_requests
        base = max(base_micro, cfg["floor_requests"] * base_micro * 1000 // base_milli) if base_milli else 0
        best = None
        for gid, f in s.final_windows.items():
            if f.requests < cfg["min_requests"]:
                continue
            days = max(cfg["min_hours"] * HOUR_MS, min(now_ms, f.expires_at) - f.first_at) / DAY_MS
            ratio = f.requests / days / base_n
            if base:
                ratio = max(ratio, f.spend_micro / days / base)
            if ratio >= cfg["min_ratio"] and (best is None or ratio > best[0]):
                best = (ratio, gid, f)
        if best is None:
            return None
        ratio, gid, f = best
        counters = plan_counters(common_of(state), 0.5, 0.4)
        share = (f.weighted_requests / f.requests if f.requests
                 else f.weighted_spend_micro / f.spend_micro if f.spend_micro else 0.0)
        if share < cfg["min_weighted_share"]:
            counters.append((f"only {round(share * 100)}% of the burst in multiplied categories", 0.5))
        return self.fire(
            state, cfg, base=ramp(ratio, cfg["min_ratio"], cfg["full_ratio"]), counters=counters,
            observed=f"{ratio_text(ratio, 1)}x daily baseline ({f.requests} requests, "
                     f"{credits_text(f.spend_micro)} credits in the last days)",
            limit=f"{cfg['min_ratio']}x baseline of {base_n:g} requests or {credits_text(base)} credits/day",
            value=ratio, threshold=cfg["min_ratio"],
            window_start=f.expires_at - cfg["final_days"] * DAY_MS, window_end=min(now_ms, f.expires_at),
            counts={"final_requests": f.requests, "final_weighted_requests": f.weighted_requests,
                    "final_spend_micro": f.spend_micro,
                    "weighted_spend_micro": f.weighted_spend_micro, "baseline_micro": base,
                    "baseline_milli_requests": int(base_n * 1000), "baseline_days": s.active_days},
            exposed_micro=f.spend_micro, grant_id=gid,
        )


DETECTOR = BurnBeforeExpiry()
