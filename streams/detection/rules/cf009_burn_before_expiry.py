"""CF-009 burn before expiry: in a grant's last days, grant-funded requests (or spend) far above the
account's own daily baseline, concentrated in high-multiplier categories."""

from __future__ import annotations

from .base import (
    DAY_MS,
    HOUR_MS,
    WEIGHTED,
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

# Final-window figures of one grant: [grant spend, weighted spend, first_ms, expires_ms, requests, weighted requests]
SPEND, WSPEND, FIRST, EXPIRES, REQS, WREQS = range(6)


class BurnBeforeExpiry(Detector):
    id = "CF-009"
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

    def initial(self) -> State:
        # d: current day; dc/dn: baseline spend / requests today; base: EWMA micro/day; basen: EWMA
        # milli-requests/day; act: active baseline days; fin: grant -> final-window figures (above)
        return {"d": None, "dc": 0, "dn": 0, "base": 0, "basen": 0, "act": 0, "fin": {}}

    def observe(self, state: State, obs: Obs, cfg: Cfg) -> None:
        s = self.slot(state)
        common = state["_"]
        t = int(obs["occurred_at"])
        day = t // DAY_MS
        if s["d"] is None:
            s["d"] = day
        elif day > s["d"]:
            self._fold(s, day)
        final_ms = cfg["final_days"] * DAY_MS
        weighted = obs["category"] in WEIGHTED
        in_final = False
        for gid, amount, _balance in obs.get("debits") or ():
            g = common["g"].get(gid)
            exp = g.get("exp") if g else None
            if exp is None or not exp - final_ms <= t < exp:
                continue
            in_final = True
            f = s["fin"].get(gid)
            if f is None:
                f = s["fin"][gid] = [0, 0, t, exp, 0, 0]
                if len(s["fin"]) > 8:
                    del s["fin"][min(s["fin"], key=lambda k: s["fin"][k][FIRST])]
            f[SPEND] += int(amount)
            f[REQS] += 1
            if weighted:
                f[WSPEND] += int(amount)
                f[WREQS] += 1
        # Final-window and flagged traffic must not teach the baseline that bursts are normal.
        if not in_final and common.get("flag", 0) <= t:
            s["dc"] += int(obs["charged_micro"])
            s["dn"] += 1

    @staticmethod
    def _fold(s: State, day: int) -> None:
        base, basen = s["base"], s.get("basen", 0)
        if s["dc"] > 0 or s.get("dn", 0) > 0:
            s["act"] += 1
        base += (s["dc"] - base) // 4
        basen += (s.get("dn", 0) * 1000 - basen) // 4
        for _ in range(min(day - s["d"] - 1, 14)):
            base -= base // 4  # empty days decay the baselines too
            basen -= basen // 4
        s["base"], s["basen"] = base, basen
        s["dc"] = s["dn"] = 0
        s["d"] = day

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        s = self.slot(state)
        if s["act"] < cfg["min_active_days"] or not s["fin"]:
            return None
        base_n = max(s.get("basen", 0) / 1000, cfg["floor_requests"])
        # The spend baseline floored at the same number of requests at the baseline's own average price.
        base = max(s["base"], cfg["floor_requests"] * s["base"] * 1000 // s["basen"]) if s.get("basen") else 0
        best = None
        for gid, f in s["fin"].items():
            if f[REQS] < cfg["min_requests"]:
                continue
            days = max(cfg["min_hours"] * HOUR_MS, min(now_ms, f[EXPIRES]) - f[FIRST]) / DAY_MS
            ratio = f[REQS] / days / base_n
            if base:
                ratio = max(ratio, f[SPEND] / days / base)
            if ratio >= cfg["min_ratio"] and (best is None or ratio > best[0]):
                best = (ratio, gid, f)
        if best is None:
            return None
        ratio, gid, f = best
        counters = plan_counters(state["_"], 0.5, 0.4)
        share = f[WREQS] / f[REQS] if f[REQS] else (f[WSPEND] / f[SPEND] if f[SPEND] else 0.0)
        if share < cfg["min_weighted_share"]:
            counters.append((f"only {round(share * 100)}% of the burst in multiplied categories", 0.5))
        return self.fire(
            state, cfg, base=ramp(ratio, cfg["min_ratio"], cfg["full_ratio"]), counters=counters,
            observed=f"{ratio_text(ratio, 1)}x daily baseline ({f[REQS]} requests, "
                     f"{credits_text(f[SPEND])} credits in the last days)",
            limit=f"{cfg['min_ratio']}x baseline of {base_n:g} requests or {credits_text(base)} credits/day",
            value=ratio, threshold=cfg["min_ratio"],
            window_start=f[EXPIRES] - cfg["final_days"] * DAY_MS, window_end=min(now_ms, f[EXPIRES]),
            counts={"final_requests": f[REQS], "final_weighted_requests": f[WREQS], "final_spend_micro": f[SPEND],
                    "weighted_spend_micro": f[WSPEND], "baseline_micro": base,
                    "baseline_milli_requests": int(base_n * 1000), "baseline_days": s["act"]},
            exposed_micro=f[SPEND], grant_id=gid,
        )


DETECTOR = BurnBeforeExpiry()
