"""CF-001 round-the-clock bot: requests in (nearly) every hour of the last 24."""

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
    plan_counters,
    ramp,
    window_exposed,
)


class RoundTheClockState(RuleState):
    """A ring of 24 hour slots: slot i counts the events of the absolute hour ``hours[i]``
    (``hours[i] % 24 == i``), so the last 24 hours are read without keeping timestamps."""

    hours: list[int] = msgspec.field(name="hr", default_factory=lambda: [-1] * 24)
    counts: list[int] = msgspec.field(name="c", default_factory=lambda: [0] * 24)


class RoundTheClock(Detector[RoundTheClockState]):
    id = "CF-001"
    state_type = RoundTheClockState
    revision = 2
    name = "Round-the-clock bot"
    signal = ("Requests in at least `min_active_hours` of the last 24 hours (and at least `min_events` "
              "of them): people sleep, scripts do not.")
    window = "rolling 24 hours, hour buckets (ring of 24 slots)"
    counter_signal_doc = ("the six quietest hours under `rhythm_ratio` of the six busiest; a quiet gap of "
                          "`quiet_gap_hours` or more inside the window; a paid plan, above all a team/enterprise "
                          "one (API keys run CI and integrations all day); mostly subscription-funded usage")
    suggested_action = "Rate-limit grant-funded usage and check for automation on a free grant."
    defaults = {"min_active_hours": 20, "min_events": 48, "quiet_gap_hours": 3, "min_history_hours": 20,
                "rhythm_ratio": "0.25",
                "min_score": "0.5"}

    def observe(self, state: State, obs: Obs, cfg: Cfg) -> None:
        s = self.slot(state)
        h = int(obs["occurred_at"]) // HOUR_MS
        i = h % 24
        hours, counts = s.hours, s.counts
        if hours[i] != h:
            if hours[i] > h:
                return  # a very late event; its hour already left the ring
            hours[i] = h
            counts[i] = 0
        counts[i] += 1

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        s = self.slot(state)
        common = common_of(state)
        if common.first_event_at is None or now_ms - common.first_event_at < cfg["min_history_hours"] * HOUR_MS:
            return None
        now_h = now_ms // HOUR_MS
        active = events = run = longest_quiet = 0
        for h in range(now_h - 23, now_h + 1):
            i = h % 24
            if s.hours[i] == h and s.counts[i] > 0:
                active += 1
                events += s.counts[i]
                run = 0
            else:
                run += 1
                longest_quiet = max(longest_quiet, run)
        if active < cfg["min_active_hours"] or events < cfg["min_events"]:
            return None
        counters: list[tuple[str, float]] = []
        # People who use the product at all hours still have a night: their six quietest hours are
        # a small fraction of their six busiest, where a script's are of the same order.
        counts = sorted(s.counts[h % 24] if s.hours[h % 24] == h else 0 for h in range(now_h - 23, now_h + 1))
        rhythm = sum(counts[:6]) / max(1, sum(counts[-6:]))
        if rhythm < cfg["rhythm_ratio"]:
            text = f"strong daily rhythm: quietest 6 hours at {round(rhythm * 100)}% of the busiest 6"
            counters.append((text, 0.45))
        if longest_quiet >= cfg["quiet_gap_hours"]:
            counters.append((f"quiet gap of {longest_quiet}h in the window", 0.5))
        # API keys on paid plans run CI and integrations all day: that is what they pay for.
        counters += plan_counters(common, 0.45, 0.4)
        return self.fire(
            state, cfg,
            base=ramp(active, cfg["min_active_hours"], 24),
            counters=counters,
            observed=f"{active} active hours of 24",
            limit=str(cfg["min_active_hours"]),
            value=active, threshold=cfg["min_active_hours"],
            window_start=(now_h - 23) * HOUR_MS,
            window_end=now_ms,
            counts={"events": events, "active_hours": active, "longest_quiet_hours": longest_quiet},
            exposed_micro=window_exposed(common),
        )


DETECTOR = RoundTheClock()
