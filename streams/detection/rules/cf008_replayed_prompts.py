"""CF-008 replayed prompts: one prompt fingerprint dominating an account's requests, or one prompt
fingerprint replayed by many accounts (watched per prompt fingerprint after a repartition)."""

from __future__ import annotations

import msgspec

from .base import (
    DAY_MS,
    WEIGHTED,
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

TOP_K = 8


class ReplayedPromptsState(RuleState):
    # Requests, and of them in multiplied categories (halved every 1000 on accounts).
    requests: int = msgspec.field(name="n", default=0)
    weighted_requests: int = msgspec.field(name="w", default=0)
    # Accounts: prompt fingerprint -> [requests, weighted requests], the TOP_K heaviest (space-saving).
    top_prompts: dict[str, list[int]] = msgspec.field(name="k", default_factory=dict)
    # Prompt fingerprints: account id -> [first seen, last seen] (event time), the 64 latest.
    accounts: dict[str, list[int]] = msgspec.field(name="a", default_factory=dict)


class ReplayedPrompts(Detector[ReplayedPromptsState]):
    id = "CF-008"
    state_type = ReplayedPromptsState
    revision = 2
    name = "Replayed prompts"
    entity_types = ("account", "prompt")
    signal = ("Account: the top prompt fingerprint is at least `min_top_share` of at least `min_requests` "
              "requests (space-saving top-8 counter). Prompt: at least `min_accounts` accounts replayed the "
              "same fingerprint in `window_hours`, mostly in multiplied categories.")
    window = "account: decayed counts (halved every 1000 requests); prompt: rolling `window_hours` hours"
    counter_signal_doc = ("a paid plan, above all a team/enterprise one (test suites, templated automation); "
                          "replays mostly in 1.0x chat (a common greeting, not credit gaming)")
    suggested_action = "Inspect the replayed fingerprint's usage; the credits bought nothing new."
    defaults = {"min_top_share": "0.5", "min_requests": 30, "min_accounts": 8, "full_accounts": 20,
                "window_hours": 24, "min_score": "0.5"}

    def observe(self, state: State, obs: Obs, cfg: Cfg) -> None:
        s = self.slot(state)
        weighted = 1 if obs["category"] in WEIGHTED else 0
        s.requests += 1
        s.weighted_requests += weighted
        if common_of(state).kind == "prompt":
            a = s.accounts
            t = int(obs["occurred_at"])
            seen = a.get(obs["account_id"])
            # [first, last] seen: an evaluation at t names only accounts seen at or before t.
            a[obs["account_id"]] = [min(seen[0], t), max(seen[1], t)] if seen else [t, t]
            if len(a) > 64:
                del a[min(a, key=lambda k: a[k][1])]
            return
        fp = obs.get("prompt_fingerprint")
        if not fp:
            return
        k = s.top_prompts
        entry = k.get(fp)
        if entry is None:
            if len(k) >= TOP_K:
                # Space-saving: the new key inherits the smallest counter, so heavy hitters survive.
                victim = min(k, key=lambda key: k[key][0])
                entry = [k.pop(victim)[0], 0]
            else:
                entry = [0, 0]
            k[fp] = entry
        entry[0] += 1
        entry[1] += weighted
        if s.requests >= 1000:
            s.requests //= 2
            s.weighted_requests //= 2
            for e in k.values():
                e[0] //= 2
                e[1] //= 2

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        s = self.slot(state)
        common = common_of(state)
        if common.kind == "prompt":
            return self._evaluate_prompt(state, s, now_ms, cfg)
        n = s.requests
        if n < cfg["min_requests"] or not s.top_prompts:
            return None
        fp, (top, top_w) = max(s.top_prompts.items(), key=lambda kv: kv[1][0])
        share = top / n
        if share < cfg["min_top_share"]:
            return None
        # Test suites and templated automation replay prompts on purpose; paid plans run them.
        counters = plan_counters(common, 0.45, 0.4)
        if top_w * 2 < top:
            counters.append(("the replayed prompt is mostly plain 1.0x chat", 0.6))
        return self.fire(
            state, cfg, base=ramp(share, cfg["min_top_share"], 0.9), counters=counters,
            observed=f"top prompt share {ratio_text(share)}", limit=str(cfg["min_top_share"]),
            value=share, threshold=cfg["min_top_share"],
            window_start=common.first_event_at or now_ms, window_end=now_ms,
            counts={"requests": n, "top_prompt_requests": top},
            exposed_micro=window_exposed(common),
            related=(f"prompt:{fp}",),
        )

    def _evaluate_prompt(self, state: State, s: ReplayedPromptsState, now_ms: int, cfg: Cfg) -> Firing | None:
        common = common_of(state)
        since = now_ms - cfg["window_hours"] * DAY_MS // 24
        accounts = sorted((a for a, (first, last) in s.accounts.items() if last >= since and first <= now_ms),
                          key=lambda a: -s.accounts[a][1])
        if len(accounts) < cfg["min_accounts"]:
            return None
        counters: list[tuple[str, float]] = []
        if s.weighted_requests * 2 < s.requests:
            counters.append(("replays mostly plain 1.0x chat (a common prompt)", 0.4))
        return self.fire(
            state, cfg, base=ramp(len(accounts), cfg["min_accounts"], cfg["full_accounts"]),
            counters=counters,
            observed=f"{len(accounts)} accounts replayed one prompt fingerprint",
            limit=str(cfg["min_accounts"]), value=len(accounts), threshold=cfg["min_accounts"],
            window_start=since, window_end=now_ms,
            counts={"accounts": len(accounts), "requests": s.requests, "weighted_requests": s.weighted_requests},
            exposed_micro=window_exposed(common),
            entity_type="prompt", entity_id=common.entity_id,
            related=tuple(f"account:{a}" for a in accounts[:20]),
        )


DETECTOR = ReplayedPrompts()
