"""The rule book: the twelve rules, and the engine that routes each observation to the rules that
watch its entity and decides when they are evaluated. It holds no I/O and no metering: the processor
meters (``streams/credits/meter.py``) and ``streams/detection/engine.py`` hands the metered records
here, and tests and the evaluation go through that same path (``streams/synthetic/in_process.py``).

When a rule is evaluated is a function of the entity's own events in event time, never of when they
arrived, so a backlog and the same traffic sent paced give the same alerts:
- after the entity's first event, and after every ``eval_every_events`` events not evaluated yet;
- before an event that comes ``eval_every_ms`` or more after the entity's previous one, the events
  not evaluated yet are evaluated at that previous event's time (the "tail"). The processor's timer
  evaluates the same tail at the same time when the entity's partition has moved on by
  ``eval_every_ms`` of event time (``Detection.evaluate_quiet``): whichever comes first, the tail is
  evaluated once, at the same event time, over the same state.
A rule evaluated at event time t is given t and reads its state: per-account state holds the
account's events in order; per-fingerprint rules, whose observations come from several partitions,
count only accounts first seen at or before t.

State: per-account state lives in a table keyed by account id, per-fingerprint state in a table
keyed by ``kind|fingerprint``; both are dicts of typed records (``"_"`` -> ``CommonState``, each
rule's id -> its ``RuleState``; see ``streams/detection/rules/base.py``) that the engine mutates in
place (an empty dict is initialised on first use). ``streams/detection/state.py`` writes them to the
changelog and reads them back, including what earlier versions wrote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from streams.credits.policy import CompiledPolicy
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
    CommonState,
    Detector,
    Firing,
    State,
    common_of,
    new_common,
    observe_common,
    observe_grant_common,
)

DETECTORS: tuple[Detector[Any], ...] = (
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
DETECTORS_BY_ID: dict[str, Detector[Any]] = {d.id: d for d in DETECTORS}
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
        detectors: Sequence[Detector[Any]] = DETECTORS,
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
        common.kind = kind
        return {"_": common}

    # -- per event --------------------------------------------------------------------------------

    def observe_account(self, account_state: State, obs: Mapping[str, Any]) -> list[Firing]:
        """Per metered event, in the account's partition. O(1) per detector; evaluates the account's
        rules only when due. Mutates ``account_state``."""
        if not account_state:
            account_state.update(self.new_account_state(obs["account_id"]))
        common = common_of(account_state)
        if not common.entity_id:  # a state made by ``mark_confirmed`` before the account's first event
            common.entity_id = obs["account_id"]
        t = int(obs["occurred_at"])
        out = self._tail(account_state, t, self._account)
        observe_common(common, obs)
        for det, cfg in self._account:
            det.observe(account_state, obs, cfg)
        if self._due(common, t):
            out += self.evaluate_account(account_state, t)
        return out

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
        common = common_of(fp_state)
        t = int(obs["occurred_at"])
        out = [] if first else self._tail(fp_state, t, rules)
        observe_common(common, obs, with_grants=False)
        for det, cfg in rules:
            det.observe(fp_state, obs, cfg)
        if first:
            # Every fingerprint rule needs several accounts or events behind one fingerprint; most
            # fingerprints (prompts above all) are seen once, and evaluating those was the bulk of
            # the fingerprint rules' cost. The first evaluation comes with the clock as usual.
            common.evaluated_at = t
            return []
        if self._due(common, t):
            out += self.evaluate_fingerprint(fp_state, t)
        return out

    def observe_grant(self, account_state: State, grant: Mapping[str, Any]) -> list[Firing]:
        """Per CreditGrant event (ISSUED/REVOKED) of the account. Burn-before-expiry and fast depletion
        need the grant's dates, which the debits alone do not carry."""
        if not account_state:
            account_state.update(self.new_account_state(grant["account_id"]))
        observe_grant_common(common_of(account_state), grant)
        return []

    # -- evaluation -------------------------------------------------------------------------------

    def tail_due(self, common: CommonState, t: int) -> bool:
        """Whether the entity's events not evaluated yet are to be evaluated (at its last event) now
        that event time ``t`` was reached, by its next event or by its partition."""
        last = common.last_event_at
        return bool(common.events_since_evaluation) and last is not None and t - last >= self.eval_every_ms

    def _tail(self, state: State, t: int, rules: Sequence[tuple[Detector[Any], dict[str, Any]]]) -> list[Firing]:
        common = common_of(state)
        if self.tail_due(common, t):
            return self._evaluate(state, int(common.last_event_at), rules)  # type: ignore[arg-type]
        return []

    def _due(self, common: CommonState, t: int) -> bool:
        # Time alone never makes an event due: the tail rule evaluates the events before a pause.
        return common.evaluated_at is None or common.events_since_evaluation >= self.eval_every_events

    def evaluate_account(self, account_state: State, now_ms: int) -> list[Firing]:
        """Run every account rule now (event time). Also callable from a timer to flush quiet accounts."""
        return self._evaluate(account_state, now_ms, self._account)

    def evaluate_fingerprint(self, fp_state: State, now_ms: int) -> list[Firing]:
        return self._evaluate(fp_state, now_ms, self._fingerprint[common_of(fp_state).kind or ""])

    def _evaluate(self, state: State, now_ms: int, rules: Sequence[tuple[Detector[Any], dict[str, Any]]]
                  ) -> list[Firing]:
        common = common_of(state)
        # Never evaluate before an earlier evaluation: alert times of an entity do not go backwards.
        now_ms = max(now_ms, common.evaluated_at or now_ms)
        common.events_since_evaluation = 0
        common.evaluated_at = now_ms
        out: list[Firing] = []
        for det, cfg in rules:
            firing = det.evaluate(state, now_ms, cfg)
            if firing is not None:
                out.append(firing)
        if out:
            common.flagged_until = max(common.flagged_until, now_ms + self.flag_ms)
        return out

    @staticmethod
    def mark_confirmed(account_state: State) -> None:
        """A reviewer confirmed gaming: keep this entity's traffic out of every baseline from now on."""
        common = account_state.get("_")
        if common is None:  # no event seen yet: the first one names the entity (``observe_account``)
            common = account_state["_"] = new_common("")
        common.flagged_until = 1 << 62
