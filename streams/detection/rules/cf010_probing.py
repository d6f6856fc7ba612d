"""CF-010 error/refusal probing: bursts of refused or invalid requests (testing limits, policy
filters or the metering itself)."""

from __future__ import annotations

from typing import Any

import msgspec

from .base import (
    MINUTE_MS,
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


class ProbingState(RuleState):
    # Requests per ``bucket_minutes`` (two buckets): "n" all, "bad" refused or invalid, "ref" refused.
    buckets: TwoBuckets = msgspec.field(name="win", default_factory=TwoBuckets)
    # Bad requests per error code (8 most frequent): one repeated code is a broken integration.
    probe_codes: dict[str, int] = msgspec.field(name="codes", default_factory=dict)


class Probing(Detector[ProbingState]):
    id = "CF-010"
    state_type = ProbingState
    revision = 1
    name = "Error/refusal probing"
    signal = ("At least `min_bad` refused or invalid requests (outcome REFUSED or an error code in "
              "`probe_codes`) in the burst window, and at least `min_bad_share` of all requests in it.")
    window = "two `bucket_minutes`-minute buckets (10-20 minutes)"
    counter_signal_doc = "one repeated non-refusal error code (a broken integration, not a probe)"
    suggested_action = "Throttle the account and review the refused requests' categories."
    defaults = {"bucket_minutes": 10, "min_bad": 15, "full_bad": 60, "min_bad_share": "0.5",
                "probe_codes": "E_REFUSED,E_INVALID_REQUEST,E_POLICY_VIOLATION,E_CONTEXT_LENGTH,E_BAD_TOOL",
                "min_score": "0.5"}

    def observe(self, state: State, obs: Obs, cfg: Cfg) -> None:
        s = self.slot(state)
        cur = bucket(s.buckets, int(obs["occurred_at"]) // (cfg["bucket_minutes"] * MINUTE_MS))
        cur["n"] = cur.get("n", 0) + 1
        outcome = obs["outcome"]
        if outcome == "SUCCESS":
            return
        code = obs.get("error_code") or outcome
        if outcome == "REFUSED" or code in cfg["_probe_codes"]:
            cur["bad"] = cur.get("bad", 0) + 1
            codes = s.probe_codes
            codes[code] = codes.get(code, 0) + 1
            if len(codes) > 8:
                del codes[min(codes, key=lambda k: codes[k])]
            if outcome == "REFUSED":
                cur["ref"] = cur.get("ref", 0) + 1

    def prepare(self, cfg: dict[str, Any]) -> None:
        codes = cfg["probe_codes"]
        # A comma-separated string or a TOML array.
        items = codes.split(",") if isinstance(codes, str) else list(codes)
        cfg["_probe_codes"] = frozenset(str(c).strip() for c in items if str(c).strip())

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        s = self.slot(state)
        win = s.buckets
        if win.index is None:
            return None
        bucket_ms = cfg["bucket_minutes"] * MINUTE_MS
        # A burst is only current while its buckets are; an old burst was judged when it happened.
        if now_ms // bucket_ms > win.index + 1:
            return None
        bad = both(win, "bad")
        n = both(win, "n")
        if bad < cfg["min_bad"] or bad < n * cfg["min_bad_share"]:
            return None
        counters: list[tuple[str, float]] = []
        refused = both(win, "ref")
        if refused * 5 < bad and len(s.probe_codes) <= 1:
            counters.append(("one repeated error code (looks like a broken integration)", 0.4))
        return self.fire(
            state, cfg, base=ramp(bad, cfg["min_bad"], cfg["full_bad"]), counters=counters,
            observed=f"{bad} refused/invalid of {n} requests ({ratio_text(bad / n)})",
            limit=f"{cfg['min_bad']} and share {cfg['min_bad_share']}", value=bad, threshold=cfg["min_bad"],
            window_start=(win.index - 1) * bucket_ms, window_end=now_ms,
            counts={"requests": n, "refused_or_invalid": bad, "refused": refused,
                    **{f"code:{k}": v for k, v in s.probe_codes.items()}},
            exposed_micro=window_exposed(common_of(state)),
        )


DETECTOR = Probing()
