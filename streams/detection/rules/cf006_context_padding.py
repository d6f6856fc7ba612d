"""CF-006 context padding: extended-context requests sized just over the threshold, with tiny
outputs or mostly repeated context, i.e. filler added to earn the 3.5x multiplier."""

from __future__ import annotations

import msgspec

from .base import (
    DAY_MS,
    Cfg,
    Detector,
    Firing,
    Obs,
    RuleState,
    State,
    TwoBuckets,
    both,
    bucket,
    common_of,
    ramp,
    ratio_text,
    window_exposed,
)


class ContextPaddingState(RuleState):
    # Extended-context requests per day (two days): "ext" all of them, "near" those near the window
    # limit, "small" those with small outputs, "lowu" those with low context uniqueness.
    days: TwoBuckets = msgspec.field(name="win", default_factory=TwoBuckets)


class ContextPadding(Detector[ContextPaddingState]):
    id = "CF-006"
    state_type = ContextPaddingState
    revision = 1
    name = "Context padding"
    signal = ("Of at least `min_ext` extended-context requests, a share >= `min_near_share` sized within "
              "`near_pct`% above the threshold, together with small outputs (<= `small_output_tokens`) or "
              "low context uniqueness (< `low_uniqueness`) in >= `min_filler_share` of them.")
    window = "two day-buckets (24-48 hours)"
    counter_signal_doc = "outputs that are substantial on most requests (real long-document work)"
    suggested_action = "Review the account's extended-context requests; consider re-pricing them at 1.0x."
    defaults = {"threshold_tokens": 100000, "near_pct": 10, "min_ext": 15, "min_near_share": "0.5",
                "small_output_tokens": 200, "low_uniqueness": "0.35", "min_filler_share": "0.5",
                "min_score": "0.5"}

    def observe(self, state: State, obs: Obs, cfg: Cfg) -> None:
        if obs["category"] != "EXTENDED_CONTEXT":
            return
        s = self.slot(state)
        cur = bucket(s.days, int(obs["occurred_at"]) // DAY_MS)
        ctx = int(obs["context_window_tokens"])
        threshold = cfg["threshold_tokens"]
        cur["ext"] = cur.get("ext", 0) + 1
        if ctx < threshold + threshold * cfg["near_pct"] // 100:
            cur["near"] = cur.get("near", 0) + 1
        if int(obs["output_tokens"]) <= cfg["small_output_tokens"]:
            cur["small"] = cur.get("small", 0) + 1
        u = obs.get("context_uniqueness")
        if u is not None and u < cfg["low_uniqueness"]:
            cur["lowu"] = cur.get("lowu", 0) + 1

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        s = self.slot(state)
        win = s.days
        if win.index is None:
            return None
        ext = both(win, "ext")
        if ext < cfg["min_ext"]:
            return None
        near = both(win, "near") / ext
        small = both(win, "small") / ext
        lowu = both(win, "lowu") / ext
        filler = max(small, lowu)
        if near < cfg["min_near_share"] or filler < cfg["min_filler_share"]:
            return None
        counters: list[tuple[str, float]] = []
        if small < 0.2:
            counters.append((f"substantial outputs on {round((1 - small) * 100)}% of requests", 0.8))
        return self.fire(
            state, cfg,
            base=ramp(near * filler, cfg["min_near_share"] * cfg["min_filler_share"], 0.8),
            counters=counters,
            observed=f"{ratio_text(near)} near-threshold share, {ratio_text(filler)} filler share",
            limit=f"{cfg['min_near_share']} and {cfg['min_filler_share']}",
            value=near * filler, threshold=cfg["min_near_share"] * cfg["min_filler_share"],
            window_start=(win.index - 1) * DAY_MS, window_end=now_ms,
            counts={"extended_requests": ext, "near_threshold": both(win, "near"),
                    "small_outputs": both(win, "small"), "low_uniqueness": both(win, "lowu")},
            exposed_micro=window_exposed(common_of(state)),
        )


DETECTOR = ContextPadding()
