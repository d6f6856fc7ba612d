"""The detector engine: routes each observation to the rules that watch its entity, keeps evaluation
cheap (at most once per `eval_every_events` events or `eval_every_ms` of event time per entity), and
offers an in-memory runner for tests and the evaluation harness.

Wiring contract (see each method): per-account state lives in a table keyed by account id, per-
fingerprint state in tables keyed by fingerprint after a ``group_by``; both are JSON-able dicts that
the engine mutates in place (an empty dict is initialised on first use).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from streams.credits.ledger import apply_grant_event, debit
from streams.credits.policy import CompiledPolicy, charge, classify, list_price_micro, load_policy
from streams.detection.rules import (
    cf001_round_the_clock as round_the_clock,
)
from streams.detection.rules import (
    cf002_cadence as cadence,
)
from streams.detection.rules import (
    cf003_fast_depletion as depletion,
)
from streams.detection.rules import (
    cf004_farming as farming,
)
from streams.detection.rules import (
    cf005_trial_cycling as trial_cycling,
)
from streams.detection.rules import (
    cf006_context_padding as padding,
)
from streams.detection.rules import (
    cf007_category_skew as category_skew,
)
from streams.detection.rules import (
    cf008_replayed_prompts as replayed_prompts,
)
from streams.detection.rules import (
    cf009_burn_before_expiry as burn_before_expiry,
)
from streams.detection.rules import (
    cf010_probing as probing,
)
from streams.detection.rules import (
    cf011_spike as spike,
)
from streams.detection.rules import (
    cf012_account_sharing as account_sharing,
)
from streams.detection.rules.base import (
    DAY_MS,
    Detector,
    Firing,
    State,
    new_common,
    observe_common,
    observe_grant_common,
)

DETECTORS: tuple[Detector, ...] = (
    round_the_clock.DETECTOR,
    cadence.DETECTOR,
    depletion.DETECTOR,
    farming.DETECTOR,
    trial_cycling.DETECTOR,
    padding.DETECTOR,
    category_skew.DETECTOR,
    replayed_prompts.DETECTOR,
    burn_before_expiry.DETECTOR,
    probing.DETECTOR,
    spike.DETECTOR,
    account_sharing.DETECTOR,
)
DETECTORS_BY_ID: dict[str, Detector] = {d.id: d for d in DETECTORS}
# Fingerprint kind -> the observation field that carries it.
FINGERPRINT_FIELDS: dict[str, str] = {"device": "device_hash", "payment": "payment_hash",
                                      "prompt": "prompt_fingerprint"}


class DetectorEngine:
    def __init__(
        self,
        policy_detectors_cfg: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        policy: CompiledPolicy | None = None,
        eval_every_events: int = 16,
        eval_every_ms: int = 60_000,
        flag_ms: int = DAY_MS,
        detectors: Sequence[Detector] = DETECTORS,
    ) -> None:
        if policy_detectors_cfg is None and policy is not None:
            policy_detectors_cfg = policy.detectors
        cfgs = policy_detectors_cfg or {}
        self.policy = policy
        self.eval_every_events = eval_every_events
        self.eval_every_ms = eval_every_ms
        self.flag_ms = flag_ms
        self.detectors = tuple(detectors)
        self.cfg: dict[str, dict[str, Any]] = {d.id: d.config(cfgs.get(d.id)) for d in self.detectors}
        self._account = tuple((d, self.cfg[d.id]) for d in self.detectors if "account" in d.entity_types)
        self._fingerprint = {
            kind: tuple((d, self.cfg[d.id]) for d in self.detectors if kind in d.entity_types)
            for kind in FINGERPRINT_FIELDS
        }

    # -- state ------------------------------------------------------------------------------------

    @staticmethod
    def new_account_state(account_id: str) -> State:
        return {"_": new_common(account_id)}

    @staticmethod
    def new_fingerprint_state(kind: str, fingerprint: str) -> State:
        common = new_common(fingerprint)
        common["kind"] = kind
        return {"_": common}

    # -- per event --------------------------------------------------------------------------------

    def observe_account(self, account_state: State, obs: Mapping[str, Any]) -> list[Firing]:
        """Per metered event, in the account's partition. O(1) per detector; evaluates the account's
        rules only when due. Mutates ``account_state``."""
        if not account_state:
            account_state.update(self.new_account_state(obs["account_id"]))
        common = account_state["_"]
        observe_common(common, obs)
        for det, cfg in self._account:
            det.observe(account_state, obs, cfg)
        t = int(obs["occurred_at"])
        if self._due(common, t):
            return self.evaluate_account(account_state, t)
        return []

    def observe_fingerprint(self, kind: str, fp_state: State, obs: Mapping[str, Any]) -> list[Firing]:
        """Per metered event that carries a ``kind`` fingerprint ("device", "payment", "prompt"), in
        the fingerprint's partition (after ``group_by``). Mutates ``fp_state``."""
        rules = self._fingerprint.get(kind)
        if not rules:
            return []
        first = not fp_state
        if first:
            fp = obs.get(FINGERPRINT_FIELDS[kind])
            if not fp:
                return []
            fp_state.update(self.new_fingerprint_state(kind, fp))
        common = fp_state["_"]
        observe_common(common, obs, with_grants=False)
        for det, cfg in rules:
            det.observe(fp_state, obs, cfg)
        t = int(obs["occurred_at"])
        if first:
            # Every fingerprint rule needs several accounts or events behind one fingerprint; most
            # fingerprints (prompts above all) are seen once, and evaluating those was the bulk of
            # the fingerprint rules' cost. The first evaluation comes with the clock as usual.
            common["ea"] = t
            return []
        if self._due(common, t):
            return self.evaluate_fingerprint(fp_state, t)
        return []

    def observe_grant(self, account_state: State, grant: Mapping[str, Any]) -> list[Firing]:
        """Per CreditGrant event (ISSUED/REVOKED) of the account. Burn-before-expiry and fast depletion
        need the grant's dates, which the debits alone do not carry."""
        if not account_state:
            account_state.update(self.new_account_state(grant["account_id"]))
        observe_grant_common(account_state["_"], grant)
        return []

    # -- evaluation -------------------------------------------------------------------------------

    def _due(self, common: State, t: int) -> bool:
        ea = common["ea"]
        return ea is None or common["ne"] >= self.eval_every_events or t - ea >= self.eval_every_ms

    def evaluate_account(self, account_state: State, now_ms: int) -> list[Firing]:
        """Run every account rule now (event time). Also callable from a timer to flush quiet accounts."""
        return self._evaluate(account_state, now_ms, self._account)

    def evaluate_fingerprint(self, fp_state: State, now_ms: int) -> list[Firing]:
        return self._evaluate(fp_state, now_ms, self._fingerprint[fp_state["_"]["kind"]])

    def _evaluate(self, state: State, now_ms: int, rules: Sequence[tuple[Detector, dict[str, Any]]]
                  ) -> list[Firing]:
        common = state["_"]
        common["ne"] = 0
        common["ea"] = now_ms
        out: list[Firing] = []
        for det, cfg in rules:
            firing = det.evaluate(state, now_ms, cfg)
            if firing is not None:
                out.append(firing)
        if out:
            common["flag"] = max(common.get("flag", 0), now_ms + self.flag_ms)
        return out

    @staticmethod
    def mark_confirmed(account_state: State) -> None:
        """A reviewer confirmed gaming: keep this entity's traffic out of every baseline from now on."""
        account_state.setdefault("_", {})["flag"] = 1 << 62

    # -- offline ----------------------------------------------------------------------------------

    def run_offline(
        self,
        events: Iterable[Mapping[str, Any]],
        grants: Iterable[Mapping[str, Any]] = (),
        *,
        on_observation: Callable[[dict[str, Any]], None] | None = None,
        account_states: dict[str, State] | None = None,
        fingerprint_states: dict[str, dict[str, State]] | None = None,
    ) -> list[Firing]:
        """Meter ``events`` against ``grants`` in event-time order (the same arithmetic as the real
        meter), run every rule, and finally evaluate every entity once more at its last event (the
        stream would do that on the entity's next event or a timer). Returns raw firings in order."""
        policy = self.policy or load_policy()
        self.policy = policy
        accounts = account_states if account_states is not None else {}
        fps = fingerprint_states if fingerprint_states is not None else {k: {} for k in FINGERPRINT_FIELDS}
        ledger: dict[str, dict[str, dict[str, Any]]] = {}
        spent: dict[str, dict[str, int]] = {}
        items: list[tuple[int, int, int, Mapping[str, Any]]] = [
            (int(g["occurred_at"]), 0, i, g) for i, g in enumerate(grants)
        ]
        items += [(int(e["occurred_at"]), 1, i, e) for i, e in enumerate(events)]
        items.sort(key=lambda x: x[:3])
        firings: list[Firing] = []
        for _, kind, _, rec in items:
            acct = rec["account_id"]
            state = accounts.setdefault(acct, {})
            if kind == 0:
                apply_grant_event(ledger.setdefault(acct, {}), rec)
                firings += self.observe_grant(state, rec)
                continue
            obs = meter_event(policy, rec, ledger.get(acct, {}), spent.setdefault(acct, {}))
            if on_observation is not None:
                on_observation(obs)
            firings += self.observe_account(state, obs)
            for fkind, field in FINGERPRINT_FIELDS.items():
                fp = obs.get(field)
                if fp and self._fingerprint[fkind]:
                    fp_state = fps.setdefault(fkind, {}).setdefault(fp, {})
                    firings += self.observe_fingerprint(fkind, fp_state, obs)
        for state in accounts.values():
            common = state.get("_")
            if common and common["ne"] and common["last"] is not None:
                firings += self.evaluate_account(state, common["last"])
        for by_fp in fps.values():
            for state in by_fp.values():
                common = state["_"]
                if common["ne"] and common["last"] is not None:
                    firings += self.evaluate_fingerprint(state, common["last"])
        return firings


def meter_event(policy: CompiledPolicy, ev: Mapping[str, Any], grants: Mapping[str, Any],
                spent: dict[str, int]) -> dict[str, Any]:
    """InteractionEvent -> observation, with the policy's classification and pricing and the ledger's
    burn-down: what the production meter hands to ``observe_account``."""
    price = policy.price_for(ev["model"])
    if price is None:
        raise ValueError(f"no price for model {ev['model']!r}")
    cls = classify(policy, ev["context_window_tokens"], ev["reasoning_steps"], ev["thinking_tokens"],
                   ev["tool_calls"])
    lp = list_price_micro(price, ev["input_tokens"], ev["output_tokens"], ev.get("cached_tokens", 0),
                          ev["thinking_tokens"])
    pr = charge(policy, cls.category, lp)
    t = int(ev["occurred_at"])
    debits, uncovered = debit(grants, spent, pr.charged_micro, t) if grants else ([], pr.charged_micro)
    return {
        "event_id": ev["event_id"],
        "account_id": ev["account_id"],
        "occurred_at": t,
        "plan": ev["plan"],
        "category": cls.category,
        "model": ev["model"],
        "outcome": ev["outcome"],
        "error_code": ev.get("error_code"),
        "input_tokens": ev["input_tokens"],
        "output_tokens": ev["output_tokens"],
        "context_window_tokens": ev["context_window_tokens"],
        "context_uniqueness": ev.get("context_uniqueness"),
        "reasoning_steps": ev["reasoning_steps"],
        "thinking_tokens": ev["thinking_tokens"],
        "tool_calls": ev["tool_calls"],
        "list_micro": pr.list_micro,
        "charged_micro": pr.charged_micro,
        "grant_funded_micro": pr.charged_micro - uncovered,
        "debits": [(d.grant_id, d.amount_micro, d.balance_after_micro) for d in debits],
        "ip_hash": ev.get("ip_hash"),
        "device_hash": ev.get("device_hash"),
        "payment_hash": ev.get("payment_hash"),
        "prompt_fingerprint": ev.get("prompt_fingerprint"),
    }
