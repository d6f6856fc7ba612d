"""CF-011 sudden spike: charged credits in the current hour far above the account's exponentially
weighted hourly baseline, once the baseline has warmed up."""

from __future__ import annotations

from .base import (
    HOUR_MS,
    MICRO,
    PAID_PLANS,
    Cfg,
    Detector,
    Firing,
    Obs,
    State,
    credits_text,
    ramp,
    ratio_text,
)


class Spike(Detector):
    id = "CF-011"
    revision = 1
    name = "Sudden spike"
    signal = ("Charged credits in the current hour at least `min_ratio` x the EWMA hourly baseline (alpha "
              "1/`alpha_den`, floored at `floor_micro`) and at least `min_hour_micro`, after `warmup_hours` "
              "hours of history with `min_active_hours` active ones.")
    window = "current event-time hour vs EWMA of earlier hours (empty hours included)"
    counter_signal_doc = ("the spike is mostly plain 1.0x chat; mostly subscription-funded on a paid plan "
                          "(the customer pays for it)")
    suggested_action = "Check what changed in the account's usage this hour; cap grant burn per hour."
    defaults = {"min_ratio": 10, "full_ratio": 40, "alpha_den": 10, "floor_micro": MICRO,
                "min_hour_micro": 15 * MICRO, "warmup_hours": 24, "min_active_hours": 6, "min_score": "0.5"}

    def initial(self) -> State:
        # h: current hour; hc/hw/hg: charged / weighted / grant-funded micro in it; base: EWMA micro/hour;
        # hrs: hours folded into the baseline; act: active hours folded
        return {"h": None, "hc": 0, "hw": 0, "hg": 0, "base": 0, "hrs": 0, "act": 0, "skip": False}

    def observe(self, state: State, obs: Obs, cfg: Cfg) -> None:
        s = self.slot(state)
        t = int(obs["occurred_at"])
        h = t // HOUR_MS
        if s["h"] is None:
            s["h"] = h
        elif h > s["h"]:
            self._fold(s, h, cfg["alpha_den"])
        charged = int(obs["charged_micro"])
        s["hc"] += charged
        if obs["category"] != "STANDARD_CHAT":
            s["hw"] += charged
        s["hg"] += int(obs.get("grant_funded_micro") or 0)
        if state["_"].get("flag", 0) > t:
            s["skip"] = True  # flagged traffic does not train the baseline

    @staticmethod
    def _fold(s: State, h: int, den: int) -> None:
        base = s["base"]
        if not s["skip"]:
            base += (s["hc"] - base) // den
            if s["hc"] > 0:
                s["act"] += 1
        gap = min(h - s["h"] - 1, 24 * 14)
        for _ in range(gap):
            base -= base // den
        s["base"] = base
        s["hrs"] += 1 + gap
        s["h"] = h
        s["hc"] = s["hw"] = s["hg"] = 0
        s["skip"] = False

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        s = self.slot(state)
        if s["h"] is None or s["hrs"] < cfg["warmup_hours"] or s["act"] < cfg["min_active_hours"]:
            return None
        if now_ms // HOUR_MS != s["h"]:
            return None  # the hour is over; it was judged while it was current
        hc = s["hc"]
        base = max(s["base"], cfg["floor_micro"])
        ratio = hc / base
        if hc < cfg["min_hour_micro"] or ratio < cfg["min_ratio"]:
            return None
        counters: list[tuple[str, float]] = []
        if s["hw"] * 2 < hc:
            counters.append(("the spike is mostly plain 1.0x chat", 0.6))
        if state["_"].get("plan") in PAID_PLANS and s["hg"] * 2 < hc:
            counters.append(("mostly subscription-funded on a paid plan", 0.5))
        return self.fire(
            state, cfg, base=ramp(ratio, cfg["min_ratio"], cfg["full_ratio"]), counters=counters,
            observed=f"{credits_text(hc)} credits this hour, {ratio_text(ratio, 1)}x baseline",
            limit=f"{cfg['min_ratio']}x baseline of {credits_text(base)} credits/hour",
            window_start=s["h"] * HOUR_MS, window_end=now_ms,
            counts={"hour_charged_micro": hc, "hour_weighted_micro": s["hw"], "baseline_micro": base,
                    "baseline_hours": s["hrs"]},
            exposed_micro=s["hg"],
        )


DETECTOR = Spike()
