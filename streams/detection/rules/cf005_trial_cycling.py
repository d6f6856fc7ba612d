"""CF-005 trial cycling: one new account after another on a device/payment fingerprint, each
redeeming a welcome grant once the previous account went quiet. An earlier grant run dry raises the
score; it is not required."""

from __future__ import annotations

import msgspec

from .base import (
    DAY_MS,
    ORG_PLANS,
    Cfg,
    Detector,
    Firing,
    Obs,
    RuleState,
    State,
    common_of,
    ramp,
    window_exposed,
)

ACCOUNT_CAP = 32


class CycledAccount(msgspec.Struct, array_like=True, gc=False):
    """One account's grant-funded requests on the fingerprint (a JSON array on the wire)."""

    first_seen_at: int  # a hand-over is a new account starting after every earlier one went quiet
    last_seen_at: int
    new_account: bool  # a fresh sign-up (see ``base.is_new_account``): only those are hand-overs
    exhausted_at: int | None  # a grant of it ran dry here (raises the score)
    plan: str | None


class TrialCyclingState(RuleState):
    accounts: dict[str, CycledAccount] = msgspec.field(name="a", default_factory=dict)  # account id -> entry


class TrialCycling(Detector[TrialCyclingState]):
    id = "CF-005"
    state_type = TrialCyclingState
    revision = 2
    name = "Trial cycling"
    entity_types = ("device", "payment")
    signal = ("Hand-overs on one fingerprint: a freshly signed-up account (first request within two hours "
              "of a grant) whose first grant-funded request comes after every earlier account on the "
              "fingerprint was last seen; `min_cycles` hand-overs fire, an exhausted earlier grant raises "
              "the score. Only accounts first seen at or before the evaluation's event time count.")
    window = "rolling `window_days` days; up to 32 accounts per fingerprint"
    counter_signal_doc = ("team/enterprise plans (shared corporate hardware); a long gap (> `long_gap_days`) "
                          "between one account's last request and the next one's first")
    suggested_action = "Stop issuing trial grants to this fingerprint; link and review the accounts."
    defaults = {"min_cycles": 1, "full_cycles": 3, "window_days": 30, "long_gap_days": 14, "min_score": "0.5"}

    def observe(self, state: State, obs: Obs, cfg: Cfg) -> None:
        debits = obs.get("debits")
        if not debits:
            return  # grant-funded requests only: trials are what cycles
        s = self.slot(state)
        acct = obs["account_id"]
        t = int(obs["occurred_at"])
        entry = s.accounts.get(acct)
        if entry is None:
            entry = s.accounts[acct] = CycledAccount(t, t, bool(obs.get("new_account")), None, obs.get("plan"))
            if len(s.accounts) > ACCOUNT_CAP:
                del s.accounts[min(s.accounts, key=lambda k: s.accounts[k].last_seen_at)]
        entry.first_seen_at = min(entry.first_seen_at, t)
        entry.last_seen_at = max(entry.last_seen_at, t)
        entry.new_account = entry.new_account or bool(obs.get("new_account"))
        if entry.exhausted_at is None and any(int(balance) == 0 for _gid, _amount, balance in debits):
            entry.exhausted_at = t

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        s = self.slot(state)
        common = common_of(state)
        since = now_ms - cfg["window_days"] * DAY_MS
        seen = sorted(((a, e) for a, e in s.accounts.items() if e.first_seen_at <= now_ms and e.last_seen_at >= since),
                      key=lambda ae: ae[1].first_seen_at)
        # (new account, previous account, gap, previous exhausted before the hand-over, plan)
        cycles: list[tuple[str, str, int, bool, str | None]] = []
        for i, (acct, e) in enumerate(seen):
            if not e.new_account or i == 0:
                continue
            earlier = seen[:i]
            if all(p.last_seen_at <= e.first_seen_at for _, p in earlier):
                prev, p = max(earlier, key=lambda ae: ae[1].last_seen_at)
                ran_dry = p.exhausted_at is not None and p.exhausted_at <= e.first_seen_at
                cycles.append((acct, prev, e.first_seen_at - p.last_seen_at, ran_dry, e.plan))
        if len(cycles) < cfg["min_cycles"]:
            return None
        exhausted = sum(1 for c in cycles if c[3])
        base = ramp(len(cycles) + exhausted, cfg["min_cycles"], cfg["full_cycles"])
        counters: list[tuple[str, float]] = []
        if sum(1 for c in cycles if c[4] in ORG_PLANS) * 2 >= len(cycles):
            counters.append(("new grants on team/enterprise accounts (shared corporate hardware)", 0.4))
        long_gap = cfg["long_gap_days"] * DAY_MS
        if all(c[2] > long_gap for c in cycles):
            counters.append((f"every new account came more than {cfg['long_gap_days']} days after the last",
                             0.6))
        accounts: list[str] = []
        for c in cycles:
            for a in (c[1], c[0]):
                if a not in accounts:
                    accounts.append(a)
        return self.fire(
            state, cfg, base=base, counters=counters,
            observed=f"{len(cycles)} hand-overs to new accounts ({exhausted} after an exhausted grant) "
                     f"across {len(accounts)} accounts",
            limit=str(cfg["min_cycles"]), value=len(cycles), threshold=cfg["min_cycles"],
            window_start=min(s.accounts[c[1]].first_seen_at for c in cycles), window_end=now_ms,
            counts={"cycles": len(cycles), "after_exhaustion": exhausted, "accounts": len(accounts),
                    "accounts_seen": len(seen)},
            exposed_micro=window_exposed(common),
            entity_type=common.kind or "", entity_id=common.entity_id,
            related=tuple(f"account:{a}" for a in accounts[:20]),
        )


DETECTOR = TrialCycling()
