"""CF-009 burn before expiry: in a grant's last days, grant-funded spend far above the account's own
daily baseline, concentrated in high-multiplier categories."""

from __future__ import annotations

from .base import DAY_MS, MICRO, Cfg, Detector, Firing, Obs, State, credits_text, ramp, ratio_text


class BurnBeforeExpiry(Detector):
    id = "CF-009"
    revision = 1
    name = "Burn before expiry"
    signal = ("Grant-funded spend per day in the grant's last `final_days` days at least `min_ratio` x the "
              "account's EWMA daily spend (floored at `floor_micro`), at least `min_spend_micro` in total, "
              "after `min_active_days` active days of baseline.")
    window = "the grant's last `final_days` days; baseline = EWMA of earlier days (alpha 1/4)"
    counter_signal_doc = "the burst is mostly plain 1.0x chat (using up credits, not gaming multipliers)"
    suggested_action = "Review the final-days usage; consider expiring promotional grants more gradually."
    defaults = {"final_days": 2, "min_ratio": 5, "full_ratio": 20, "floor_micro": 2 * MICRO,
                "min_spend_micro": 10 * MICRO, "min_active_days": 3, "min_weighted_share": "0.6",
                "min_score": "0.5"}

    def initial(self) -> State:
        # d: current day; dc: baseline spend today; base: EWMA micro/day; act: active baseline days;
        # fin: grant -> [final-window grant spend, weighted part, first_ms, expires_ms]
        return {"d": None, "dc": 0, "base": 0, "act": 0, "fin": {}}

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
        in_final = False
        for gid, amount, _balance in obs.get("debits") or ():
            g = common["g"].get(gid)
            exp = g.get("exp") if g else None
            if exp is None or not exp - final_ms <= t < exp:
                continue
            in_final = True
            f = s["fin"].get(gid)
            if f is None:
                f = s["fin"][gid] = [0, 0, t, exp]
                if len(s["fin"]) > 8:
                    del s["fin"][min(s["fin"], key=lambda k: s["fin"][k][2])]
            f[0] += int(amount)
            if obs["category"] != "STANDARD_CHAT":
                f[1] += int(amount)
        # Final-window and flagged spend must not teach the baseline that bursts are normal.
        if not in_final and common.get("flag", 0) <= t:
            s["dc"] += int(obs["charged_micro"])

    @staticmethod
    def _fold(s: State, day: int) -> None:
        base = s["base"]
        if s["dc"] > 0:
            s["act"] += 1
        base += (s["dc"] - base) // 4
        for _ in range(min(day - s["d"] - 1, 14)):
            base -= base // 4  # empty days decay the baseline too
        s["base"] = base
        s["dc"] = 0
        s["d"] = day

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        s = self.slot(state)
        if s["act"] < cfg["min_active_days"] or not s["fin"]:
            return None
        base = max(s["base"], cfg["floor_micro"])
        best = None
        for gid, (spend, weighted, first, exp) in s["fin"].items():
            if spend < cfg["min_spend_micro"]:
                continue
            days = max(1.0, (min(now_ms, exp) - first) / DAY_MS)
            ratio = spend / days / base
            if ratio >= cfg["min_ratio"] and (best is None or ratio > best[0]):
                best = (ratio, gid, spend, weighted, first, exp)
        if best is None:
            return None
        ratio, gid, spend, weighted, first, exp = best
        counters: list[tuple[str, float]] = []
        share = weighted / spend
        if share < cfg["min_weighted_share"]:
            counters.append((f"only {round(share * 100)}% of the burst in multiplied categories", 0.5))
        return self.fire(
            state, cfg, base=ramp(ratio, cfg["min_ratio"], cfg["full_ratio"]), counters=counters,
            observed=f"{ratio_text(ratio, 1)}x daily baseline "
                     f"({credits_text(spend)} credits in the last days)",
            limit=f"{cfg['min_ratio']}x baseline of {credits_text(base)} credits/day",
            window_start=exp - cfg["final_days"] * DAY_MS, window_end=min(now_ms, exp),
            counts={"final_spend_micro": spend, "weighted_spend_micro": weighted, "baseline_micro": base,
                    "baseline_days": s["act"]},
            exposed_micro=spend, grant_id=gid,
        )


DETECTOR = BurnBeforeExpiry()
