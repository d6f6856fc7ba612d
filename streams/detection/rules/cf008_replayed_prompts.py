"""CF-008 replayed prompts: one prompt fingerprint dominating an account's requests, or one prompt
fingerprint replayed by many accounts (watched per prompt fingerprint after a repartition)."""

from __future__ import annotations

from .base import (
    DAY_MS,
    WEIGHTED,
    Cfg,
    Detector,
    Firing,
    Obs,
    State,
    plan_counters,
    ramp,
    ratio_text,
    window_exposed,
)

TOP_K = 8


class ReplayedPrompts(Detector):
    id = "CF-008"
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

    def initial(self) -> State:
        # k: fingerprint -> [count, weighted_count] (top-k); n: requests; a: account -> last_seen (prompt)
        return {"k": {}, "n": 0, "w": 0, "a": {}}

    def observe(self, state: State, obs: Obs, cfg: Cfg) -> None:
        s = self.slot(state)
        weighted = 1 if obs["category"] in WEIGHTED else 0
        s["n"] += 1
        s["w"] += weighted
        if state["_"].get("kind", "account") == "prompt":
            a = s["a"]
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
        k = s["k"]
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
        if s["n"] >= 1000:
            s["n"] //= 2
            s["w"] //= 2
            for e in k.values():
                e[0] //= 2
                e[1] //= 2

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        s = self.slot(state)
        common = state["_"]
        if common.get("kind", "account") == "prompt":
            return self._evaluate_prompt(state, s, now_ms, cfg)
        n = s["n"]
        if n < cfg["min_requests"] or not s["k"]:
            return None
        fp, (top, top_w) = max(s["k"].items(), key=lambda kv: kv[1][0])
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
            window_start=common["first"] or now_ms, window_end=now_ms,
            counts={"requests": n, "top_prompt_requests": top},
            exposed_micro=window_exposed(common),
            related=(f"prompt:{fp}",),
        )

    def _evaluate_prompt(self, state: State, s: State, now_ms: int, cfg: Cfg) -> Firing | None:
        common = state["_"]
        since = now_ms - cfg["window_hours"] * DAY_MS // 24
        accounts = sorted((a for a, (first, last) in s["a"].items() if last >= since and first <= now_ms),
                          key=lambda a: -s["a"][a][1])
        if len(accounts) < cfg["min_accounts"]:
            return None
        counters: list[tuple[str, float]] = []
        if s["w"] * 2 < s["n"]:
            counters.append(("replays mostly plain 1.0x chat (a common prompt)", 0.4))
        return self.fire(
            state, cfg, base=ramp(len(accounts), cfg["min_accounts"], cfg["full_accounts"]),
            counters=counters,
            observed=f"{len(accounts)} accounts replayed one prompt fingerprint",
            limit=str(cfg["min_accounts"]), value=len(accounts), threshold=cfg["min_accounts"],
            window_start=since, window_end=now_ms,
            counts={"accounts": len(accounts), "requests": s["n"], "weighted_requests": s["w"]},
            exposed_micro=window_exposed(common),
            entity_type="prompt", entity_id=common["id"],
            related=tuple(f"account:{a}" for a in accounts[:20]),
        )


DETECTOR = ReplayedPrompts()
