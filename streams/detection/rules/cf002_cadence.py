"""CF-002 scripted cadence: machine-regular gaps between requests (from one second to ten minutes
apart), or an hour-of-day profile with no daily rhythm at all."""

from __future__ import annotations

import math

import msgspec

from .base import (
    HOUR_MS,
    MINUTE_MS,
    Cfg,
    Detector,
    Firing,
    Obs,
    RuleState,
    State,
    common_of,
    plan_counters,
    ramp,
    ratio_text,
    window_exposed,
)

GAP_RING = 48


class CadenceState(RuleState):
    last_event_at: int | None = msgspec.field(name="last", default=None)
    # The last GAP_RING gaps (ms) between consecutive requests inside runs: their spread is the measure.
    gaps: list[int] = msgspec.field(default_factory=list)
    # Requests per hour of day, halved when ``hour_events`` reaches 4000 (keeps it recent and small).
    hour_of_day: list[int] = msgspec.field(name="hod", default_factory=lambda: [0] * 24)
    hour_events: int = msgspec.field(name="hn", default=0)  # the histogram's total


class Cadence(Detector[CadenceState]):
    id = "CF-002"
    state_type = CadenceState
    revision = 2
    name = "Scripted cadence"
    signal = ("Spread (median absolute deviation / median) of the last 48 gaps between requests inside "
              "runs (a gap over `break_minutes` starts a new run and is not counted) at most `max_spread`, "
              "over at least `min_gaps` gaps (people are irregular at any pace; a script is not), or "
              "normalised entropy of the hour-of-day histogram at least `min_entropy` over "
              "`min_events_entropy` requests. Counts and times only: the same at any price.")
    window = "last 48 inter-request gaps inside runs; decayed hour-of-day histogram"
    counter_signal_doc = ("a paid plan, above all a team/enterprise one (scheduled jobs and CI are what API "
                          "keys are for); mostly subscription-funded usage")
    suggested_action = ("Check the client for a script; consider a CAPTCHA or API-key requirement for "
                        "the grant.")
    defaults = {"max_spread": "0.08", "min_gaps": 30, "min_gap_ms": 500, "break_minutes": 30,
                "min_entropy": "0.985", "min_events_entropy": 200, "min_score": "0.5"}

    def observe(self, state: State, obs: Obs, cfg: Cfg) -> None:
        s = self.slot(state)
        t = int(obs["occurred_at"])
        last = s.last_event_at
        if last is not None and last <= t <= last + cfg["break_minutes"] * MINUTE_MS:
            gaps = s.gaps
            gaps.append(t - last)
            if len(gaps) > GAP_RING:
                del gaps[0]
        if last is None or t > last:
            s.last_event_at = t
        s.hour_of_day[(t // HOUR_MS) % 24] += 1
        s.hour_events += 1
        if s.hour_events >= 4000:
            # Halving keeps the histogram recent and its numbers small.
            s.hour_of_day = [c // 2 for c in s.hour_of_day]
            s.hour_events = sum(s.hour_of_day)

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        s = self.slot(state)
        common = common_of(state)
        gaps = s.gaps
        best: tuple[float, float, str, str, dict[str, int], int] | None = None
        if len(gaps) >= cfg["min_gaps"]:
            ordered = sorted(gaps)
            median = ordered[len(ordered) // 2]
            if median >= cfg["min_gap_ms"]:
                deviations = sorted(abs(g - median) for g in gaps)
                spread = deviations[len(deviations) // 2] / median
                if spread <= cfg["max_spread"]:
                    base = ramp(cfg["max_spread"] - spread, 0.0, cfg["max_spread"] * 0.6)
                    best = (base, spread, f"gap spread {ratio_text(spread)} (median gap {median / 1000:g}s)",
                            f"spread <= {cfg['max_spread']}", {"gaps": len(gaps), "median_gap_ms": median},
                            now_ms - sum(gaps))
        hn = s.hour_events
        if hn >= cfg["min_events_entropy"]:
            ent = -sum((c / hn) * math.log(c / hn) for c in s.hour_of_day if c) / math.log(24)
            if ent >= cfg["min_entropy"]:
                base = ramp(ent, cfg["min_entropy"], 1.0)
                if best is None or base > best[0]:
                    best = (base, ent, f"hour-of-day entropy {ratio_text(ent)}", f">= {cfg['min_entropy']}",
                            {"events": hn}, common.first_event_at or now_ms)
        if best is None:
            return None
        base, measure, observed, limit, counts, start = best
        threshold = cfg["max_spread"] if "spread" in observed else cfg["min_entropy"]
        return self.fire(state, cfg, base=base, counters=plan_counters(common, 0.45, 0.4), observed=observed,
                         limit=limit, value=measure, threshold=threshold, window_start=start, window_end=now_ms,
                         counts=counts,
                         exposed_micro=window_exposed(common))


DETECTOR = Cadence()
