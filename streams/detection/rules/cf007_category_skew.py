"""CF-007 weighted-category skew: nearly every request steered into a multiplied category, either
with the bare minimum that qualifies it (one tool call, exactly the minimum reasoning steps) or with
every dimension maxed out, and in both cases little output."""

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
    plan_counters,
    ramp,
    ratio_text,
    window_exposed,
)


class CategorySkewState(RuleState):
    # Requests per day (two days): "n" all, "w" in multiplied categories, "min" those barely
    # qualifying, "small" those with small outputs; "list" / "charged" their micro-credits.
    days: TwoBuckets = msgspec.field(name="win", default_factory=TwoBuckets)


class CategorySkew(Detector[CategorySkewState]):
    id = "CF-007"
    state_type = CategorySkewState
    revision = 2
    name = "Weighted-category skew"
    signal = ("Share of requests in multiplied categories at least `cohort_ratio` x the plan cohort's share "
              "(`cohort_weighted_share`, overridable per plan as `cohort_weighted_share_<PLAN>`), with at "
              "least `min_minimal_share` of them gamed: qualifying by the bare minimum (tool calls == "
              "`min_tool_calls`, reasoning steps == `min_reasoning_steps`), or answered with at most "
              "`small_output_tokens` output tokens (maxed tool calls, steps or context for a few words). "
              "Shares of request counts: the same at any price.")
    window = "two day-buckets (24-48 hours)"
    counter_signal_doc = ("a paid plan, above all a team/enterprise one (agents and automation); substantial "
                          "outputs on most requests")
    suggested_action = "Compare with the plan cohort; consider capping the multiplier for this account."
    defaults = {"cohort_weighted_share": "0.35", "cohort_ratio": "2.2", "min_requests": 20,
                "min_minimal_share": "0.6", "min_tool_calls": 1, "min_reasoning_steps": 3,
                "small_output_tokens": 300, "min_score": "0.5"}

    def observe(self, state: State, obs: Obs, cfg: Cfg) -> None:
        s = self.slot(state)
        cur = bucket(s.days, int(obs["occurred_at"]) // DAY_MS)
        cur["n"] = cur.get("n", 0) + 1
        cat = obs["category"]
        cur["list"] = cur.get("list", 0) + int(obs["list_micro"])
        cur["charged"] = cur.get("charged", 0) + int(obs["charged_micro"])
        if cat == "STANDARD_CHAT":
            return
        cur["w"] = cur.get("w", 0) + 1
        small = int(obs["output_tokens"]) <= cfg["small_output_tokens"]
        if small or (cat == "TOOL_USE" and int(obs["tool_calls"]) == cfg["min_tool_calls"]) or (
            cat == "COMPLEX_REASONING" and int(obs["reasoning_steps"]) == cfg["min_reasoning_steps"]
        ):
            cur["min"] = cur.get("min", 0) + 1
        if small:
            cur["small"] = cur.get("small", 0) + 1

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        s = self.slot(state)
        win = s.days
        n = both(win, "n")
        w = both(win, "w")
        if n < cfg["min_requests"] or w == 0:
            return None
        plan = common_of(state).plan
        cohort = float(cfg.get(f"cohort_weighted_share_{plan}", cfg["cohort_weighted_share"]))
        limit = min(0.95, cohort * cfg["cohort_ratio"])
        share = w / n
        minimal = both(win, "min") / w
        if share < limit or minimal < cfg["min_minimal_share"]:
            return None
        counters = plan_counters(common_of(state), 0.6, 0.5)
        small = both(win, "small") / w
        if small < 0.3:
            counters.append(("substantial outputs on most weighted requests", 0.7))
        lst = both(win, "list")
        charged = both(win, "charged")
        return self.fire(
            state, cfg,
            base=ramp(minimal, cfg["min_minimal_share"], 0.95),
            counters=counters,
            observed=f"{ratio_text(share)} weighted share, {ratio_text(minimal)} bare-minimum qualifiers, "
                     f"charged/list {ratio_text(charged / lst if lst else 1.0)}",
            value=minimal, threshold=cfg["min_minimal_share"],
            limit=f"weighted share {ratio_text(limit)} (cohort {cohort}), "
                  f"minimum share {cfg['min_minimal_share']}",
            window_start=(win.index - 1) * DAY_MS, window_end=now_ms,  # type: ignore[operator]  # counted
            counts={"requests": n, "weighted_requests": w, "minimal_qualifiers": both(win, "min"),
                    "list_micro": lst, "charged_micro": charged},
            exposed_micro=window_exposed(common_of(state)),
        )


DETECTOR = CategorySkew()
