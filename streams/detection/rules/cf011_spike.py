"""CF-011 sudden spike: requests (or charged credits) in the current hour far above the account's
exponentially weighted hourly baseline, once the baseline has warmed up."""

from __future__ import annotations

import msgspec

from .base import (
    HOUR_MS,
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


class SpikeState(RuleState):
    # The current event-time hour and its figures; they fold into the baselines when it is over.
    hour: int | None = msgspec.field(name="h", default=None)
    hour_charged_micro: int = msgspec.field(name="hc", default=0)
    hour_weighted_micro: int = msgspec.field(name="hw", default=0)  # in multiplied categories
    hour_grant_funded_micro: int = msgspec.field(name="hg", default=0)  # the alert's exposure
    hour_requests: int = msgspec.field(name="hn", default=0)
    hour_weighted_requests: int = msgspec.field(name="hwn", default=0)  # a spike of plain chat is a counter-signal
    hour_failed_requests: int = msgspec.field(name="hf", default=0)  # a retry storm is not usage
    # Flagged traffic this hour: the hour does not train the baselines.
    hour_flagged: bool = msgspec.field(name="skip", default=False)
    # EWMA (alpha 1/alpha_den) of earlier hours, empty hours included: micro-credits per hour and
    # requests per hour x 1000 (integers keep the state exact).
    baseline_micro: int = msgspec.field(name="base", default=0)
    baseline_milli_requests: int = msgspec.field(name="basen", default=0)
    baseline_hours: int = msgspec.field(name="hrs", default=0)  # hours folded into the baselines (warm-up)
    active_hours: int = msgspec.field(name="act", default=0)  # of which with requests


class Spike(Detector[SpikeState]):
    id = "CF-011"
    state_type = SpikeState
    revision = 2
    name = "Sudden spike"
    signal = ("At least `min_hour_requests` requests in the current hour, and either they are at least "
              "`min_ratio` x the EWMA hourly request baseline (alpha 1/`alpha_den`, floored at "
              "`floor_requests`), or their charged credits are at least `min_ratio` x the EWMA hourly credit "
              "baseline (floored at `floor_requests` baseline-priced requests), after `warmup_hours` hours "
              "of history with `min_active_hours` active ones. Every floor is in requests: a model's price "
              "scales both sides of each ratio, so cheap and unpriced models are judged alike.")
    window = "current event-time hour vs EWMA of earlier hours (empty hours included)"
    counter_signal_doc = ("the spike is mostly plain 1.0x chat; mostly failed requests (a retry storm); a "
                          "paid plan, above all a team/enterprise one (batch jobs); mostly subscription-funded")
    suggested_action = "Check what changed in the account's usage this hour; cap grant burn per hour."
    defaults = {"min_ratio": 10, "full_ratio": 40, "alpha_den": 10, "floor_requests": 2, "min_hour_requests": 25,
                "warmup_hours": 24, "min_active_hours": 6, "min_score": "0.5"}

    def observe(self, state: State, obs: Obs, cfg: Cfg) -> None:
        s = self.slot(state)
        t = int(obs["occurred_at"])
        h = t // HOUR_MS
        if s.hour is None:
            s.hour = h
        elif h > s.hour:
            self._fold(s, h, cfg["alpha_den"])
        charged = int(obs["charged_micro"])
        s.hour_charged_micro += charged
        s.hour_requests += 1
        if obs["category"] != "STANDARD_CHAT":
            s.hour_weighted_micro += charged
            s.hour_weighted_requests += 1
        s.hour_grant_funded_micro += int(obs.get("grant_funded_micro") or 0)
        if obs["outcome"] != "SUCCESS":
            s.hour_failed_requests = s.hour_failed_requests + 1
        if common_of(state).flagged_until > t:
            s.hour_flagged = True  # flagged traffic does not train the baseline

    @staticmethod
    def _fold(s: SpikeState, h: int, den: int) -> None:
        base, basen = s.baseline_micro, s.baseline_milli_requests
        if not s.hour_flagged:
            base += (s.hour_charged_micro - base) // den
            basen += (s.hour_requests * 1000 - basen) // den
            if s.hour_requests > 0:
                s.active_hours += 1
        gap = min(h - s.hour - 1, 24 * 14)  # type: ignore[operator]  # set before any fold
        for _ in range(gap):
            base -= base // den
            basen -= basen // den
        s.baseline_micro, s.baseline_milli_requests = base, basen
        s.baseline_hours += 1 + gap
        s.hour = h
        s.hour_charged_micro = s.hour_weighted_micro = s.hour_grant_funded_micro = 0
        s.hour_requests = s.hour_weighted_requests = s.hour_failed_requests = 0
        s.hour_flagged = False

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        s = self.slot(state)
        if s.hour is None or s.baseline_hours < cfg["warmup_hours"] or s.active_hours < cfg["min_active_hours"]:
            return None
        if now_ms // HOUR_MS != s.hour:
            return None  # the hour is over; it was judged while it was current
        hc, hn = s.hour_charged_micro, s.hour_requests
        if hn < cfg["min_hour_requests"]:
            return None
        base_n = max(s.baseline_milli_requests / 1000, cfg["floor_requests"])
        ratio = hn / base_n
        # The credit baseline floored at the same number of requests, priced at the baseline's own
        # average: more expensive requests than usual count, a pricier model alone does not.
        base_micro, base_milli = s.baseline_micro, s.baseline_milli_requests
        base = max(base_micro, cfg["floor_requests"] * base_micro * 1000 // base_milli) if base_milli else 0
        if base:
            ratio = max(ratio, hc / base)
        if ratio < cfg["min_ratio"]:
            return None
        counters = plan_counters(common_of(state), 0.5, 0.4)
        if s.hour_weighted_requests * 2 < hn:
            counters.append(("the spike is mostly plain 1.0x chat", 0.8))
        if s.hour_failed_requests * 2 > hn:
            counters.append(("mostly failed requests: a client retrying, not usage", 0.4))
        return self.fire(
            state, cfg, base=ramp(ratio, cfg["min_ratio"], cfg["full_ratio"]), counters=counters,
            observed=f"{hn} requests, {credits_text(hc)} credits this hour: {ratio_text(ratio, 1)}x baseline",
            limit=f"{cfg['min_ratio']}x baseline of {base_n:g} requests or {credits_text(base)} credits/hour",
            value=ratio, threshold=cfg["min_ratio"],
            window_start=s.hour * HOUR_MS, window_end=now_ms,
            counts={"hour_requests": hn, "hour_weighted_requests": s.hour_weighted_requests, "hour_charged_micro": hc,
                    "hour_weighted_micro": s.hour_weighted_micro, "baseline_micro": base,
                    "baseline_milli_requests": int(base_n * 1000), "baseline_hours": s.baseline_hours},
            exposed_micro=s.hour_grant_funded_micro,
        )


DETECTOR = Spike()
