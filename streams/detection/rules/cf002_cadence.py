"""CF-002 scripted cadence: machine-regular gaps between requests, or an hour-of-day profile with no
daily rhythm at all."""

from __future__ import annotations

import math

from .base import (
    HOUR_MS,
    MINUTE_MS,
    ORG_PLANS,
    Cfg,
    Detector,
    Firing,
    Obs,
    State,
    ramp,
    ratio_text,
    window_exposed,
)

GAP_RING = 32


class Cadence(Detector):
    id = "CF-002"
    revision = 1
    name = "Scripted cadence"
    signal = ("Coefficient of variation of the last 32 gaps between requests at most `max_cv` (people "
              "are irregular), or normalised entropy of the hour-of-day histogram at least `min_entropy` "
              "over `min_events_entropy` requests.")
    window = "last 32 inter-request gaps; decayed hour-of-day histogram"
    counter_signal_doc = ("the regular gaps span less than `min_span_minutes` (an agent loop in one "
                          "sitting); a team/enterprise plan")
    suggested_action = ("Check the client for a script; consider a CAPTCHA or API-key requirement for "
                        "the grant.")
    defaults = {"max_cv": "0.25", "min_gaps": 24, "min_gap_ms": 1000, "min_span_minutes": 30,
                "min_entropy": "0.985", "min_events_entropy": 200, "min_score": "0.5"}

    def initial(self) -> State:
        return {"last": None, "gaps": [], "hod": [0] * 24, "hn": 0}

    def observe(self, state: State, obs: Obs, cfg: Cfg) -> None:
        s = self.slot(state)
        t = int(obs["occurred_at"])
        last = s["last"]
        if last is not None and t >= last:
            gaps = s["gaps"]
            gaps.append(t - last)
            if len(gaps) > GAP_RING:
                del gaps[0]
        if last is None or t > last:
            s["last"] = t
        s["hod"][(t // HOUR_MS) % 24] += 1
        s["hn"] += 1
        if s["hn"] >= 4000:
            # Halving keeps the histogram recent and its numbers small.
            s["hod"] = [c // 2 for c in s["hod"]]
            s["hn"] = sum(s["hod"])

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        s = self.slot(state)
        common = state["_"]
        gaps = s["gaps"]
        best: tuple[float, str, str, list[tuple[str, float]], dict[str, int], int] | None = None
        if len(gaps) >= cfg["min_gaps"]:
            mean = sum(gaps) / len(gaps)
            if mean >= cfg["min_gap_ms"]:
                var = sum((g - mean) ** 2 for g in gaps) / len(gaps)
                cv = math.sqrt(var) / mean
                if cv <= cfg["max_cv"]:
                    span = sum(gaps)
                    counters: list[tuple[str, float]] = []
                    if span < cfg["min_span_minutes"] * MINUTE_MS:
                        short = f"regular gaps span only {span // MINUTE_MS} min (one sitting)"
                        counters.append((short, 0.4))
                    base = ramp(cfg["max_cv"] - cv, 0.0, cfg["max_cv"] * 0.8)
                    best = (base, f"gap CV {ratio_text(cv)} (mean gap {int(mean) // 1000}s)",
                            f"CV <= {cfg['max_cv']}", counters,
                            {"gaps": len(gaps), "mean_gap_ms": int(mean)}, now_ms - span)
        hn = s["hn"]
        if hn >= cfg["min_events_entropy"]:
            ent = -sum((c / hn) * math.log(c / hn) for c in s["hod"] if c) / math.log(24)
            if ent >= cfg["min_entropy"]:
                base = ramp(ent, cfg["min_entropy"], 1.0)
                if best is None or base > best[0]:
                    best = (base, f"hour-of-day entropy {ratio_text(ent)}", f">= {cfg['min_entropy']}", [],
                            {"events": hn}, common["first"] or now_ms)
        if best is None:
            return None
        base, observed, limit, counters, counts, start = best
        plan = common.get("plan")
        if plan in ORG_PLANS:
            counters = [*counters, (f"{plan} plan: automation is expected", 0.6)]
        return self.fire(state, cfg, base=base, counters=counters, observed=observed, limit=limit,
                         window_start=start, window_end=now_ms, counts=counts,
                         exposed_micro=window_exposed(common))


DETECTOR = Cadence()
