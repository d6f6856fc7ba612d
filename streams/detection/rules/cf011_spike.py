"""CF-011 sudden spike: requests (or charged credits) in the current hour far above the account's
exponentially weighted hourly baseline, once the baseline has warmed up."""

from __future__ import annotations

from .base import (
    HOUR_MS,
    Cfg,
    Detector,
    Firing,
    Obs,
    State,
    credits_text,
    plan_counters,
    ramp,
    ratio_text,
)


class Spike(Detector):
    id = "CF-011"
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

    def initial(self) -> State:
        # h: current hour; hc/hw/hg: charged / weighted / grant-funded micro in it; hn/hwn/hf: requests /
        # weighted / failed requests in it; base: EWMA micro/hour; basen: EWMA milli-requests/hour;
        # hrs: hours folded into the baseline; act: active hours folded
        return {"h": None, "hc": 0, "hw": 0, "hg": 0, "hn": 0, "hwn": 0, "hf": 0, "base": 0, "basen": 0, "hrs": 0,
                "act": 0, "skip": False}

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
        s["hn"] += 1
        if obs["category"] != "STANDARD_CHAT":
            s["hw"] += charged
            s["hwn"] += 1
        s["hg"] += int(obs.get("grant_funded_micro") or 0)
        if obs["outcome"] != "SUCCESS":
            s["hf"] = s.get("hf", 0) + 1
        if state["_"].get("flag", 0) > t:
            s["skip"] = True  # flagged traffic does not train the baseline

    @staticmethod
    def _fold(s: State, h: int, den: int) -> None:
        base, basen = s["base"], s["basen"]
        if not s["skip"]:
            base += (s["hc"] - base) // den
            basen += (s["hn"] * 1000 - basen) // den
            if s["hn"] > 0:
                s["act"] += 1
        gap = min(h - s["h"] - 1, 24 * 14)
        for _ in range(gap):
            base -= base // den
            basen -= basen // den
        s["base"], s["basen"] = base, basen
        s["hrs"] += 1 + gap
        s["h"] = h
        s["hc"] = s["hw"] = s["hg"] = s["hn"] = s["hwn"] = s["hf"] = 0
        s["skip"] = False

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        s = self.slot(state)
        if s["h"] is None or s["hrs"] < cfg["warmup_hours"] or s["act"] < cfg["min_active_hours"]:
            return None
        if now_ms // HOUR_MS != s["h"]:
            return None  # the hour is over; it was judged while it was current
        hc, hn = s["hc"], s["hn"]
        if hn < cfg["min_hour_requests"]:
            return None
        base_n = max(s["basen"] / 1000, cfg["floor_requests"])
        ratio = hn / base_n
        # The credit baseline floored at the same number of requests, priced at the baseline's own
        # average: more expensive requests than usual count, a pricier model alone does not.
        base = max(s["base"], cfg["floor_requests"] * s["base"] * 1000 // s["basen"]) if s["basen"] else 0
        if base:
            ratio = max(ratio, hc / base)
        if ratio < cfg["min_ratio"]:
            return None
        counters = plan_counters(state["_"], 0.5, 0.4)
        if s["hwn"] * 2 < hn:
            counters.append(("the spike is mostly plain 1.0x chat", 0.8))
        if s.get("hf", 0) * 2 > hn:
            counters.append(("mostly failed requests: a client retrying, not usage", 0.4))
        return self.fire(
            state, cfg, base=ramp(ratio, cfg["min_ratio"], cfg["full_ratio"]), counters=counters,
            observed=f"{hn} requests, {credits_text(hc)} credits this hour: {ratio_text(ratio, 1)}x baseline",
            limit=f"{cfg['min_ratio']}x baseline of {base_n:g} requests or {credits_text(base)} credits/hour",
            value=ratio, threshold=cfg["min_ratio"],
            window_start=s["h"] * HOUR_MS, window_end=now_ms,
            counts={"hour_requests": hn, "hour_weighted_requests": s["hwn"], "hour_charged_micro": hc,
                    "hour_weighted_micro": s["hw"], "baseline_micro": base,
                    "baseline_milli_requests": int(base_n * 1000), "baseline_hours": s["hrs"]},
            exposed_micro=s["hg"],
        )


DETECTOR = Spike()
