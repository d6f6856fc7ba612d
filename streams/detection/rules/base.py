"""What every credit-gaming detector shares: the Detector contract, the Firing it produces, the
entity-wide common state the engine maintains, and small bounded-state helpers.

State is typed records (``msgspec.Struct``) with descriptive field names: ``CommonState`` here,
and one ``RuleState`` subclass per rule, next to the rule that owns it. Each field also has a short
wire name (``msgspec.field(name=...)``), the key earlier versions used in their JSON dicts, so the
changelog stays compact and what those versions wrote still loads (``rulebook.decode_detector_state``).
State lives in a changelog-backed table, so:
- every collection is capped (ring buffers, top-k, capped maps evicting the oldest entry);
- map keys are strings (JSON object keys);
- credits are integer micro-credits; only scores and ratios are floats.

Layout of an entity's detector state (``engine.new_account_state`` / ``new_fingerprint_state``),
a dict with one slot per detector id::

    {"_": CommonState, "CF-001": RoundTheClockState, "CF-002": CadenceState, ...}

A fingerprint's ``CommonState`` has ``kind`` set ("device" | "payment" | "prompt").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, TypeVar

import msgspec

from schemas.contracts import FEATURE_CATEGORY_SYMBOLS, SEVERITY_SYMBOLS

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
MICRO = 1_000_000
SIGNUP_MS = 2 * HOUR_MS  # a first request this soon after a grant was issued is a sign-up redeeming it

SEVERITIES = SEVERITY_SYMBOLS
SEVERITY_RANK: dict[str, int] = {s: i for i, s in enumerate(SEVERITIES)}
ORG_PLANS = frozenset({"TEAM", "ENTERPRISE"})
PAID_PLANS = frozenset({"PRO", "MAX", "TEAM", "ENTERPRISE"})
CATEGORIES = FEATURE_CATEGORY_SYMBOLS
WEIGHTED = frozenset({"EXTENDED_CONTEXT", "COMPLEX_REASONING", "TOOL_USE"})
SAMPLE_IDS = 8

# An entity's detector state: "_" -> CommonState, detector id -> that rule's RuleState.
State = dict[str, Any]
Obs = Mapping[str, Any]
Cfg = Mapping[str, Any]

_S = TypeVar("_S", bound="RuleState")


@dataclass(frozen=True, slots=True)
class Firing:
    """One detector decision about one entity. Carries everything an alert needs so the alert
    builder never has to look the detector up again."""

    rule_id: str
    rule_name: str
    rule_revision: int
    entity_type: str  # "account" | "device" | "payment" | "prompt"
    entity_id: str
    score: float
    severity: str
    observed: str  # display labels for people: "22 active hours of 24", "CV <= 0.25"
    limit: str
    window_start: int
    window_end: int
    counter_signals: tuple[str, ...] = ()
    # {"counts": {str: int}, "credits_by_category": {category: micro}, "sample_event_ids": [str]}
    evidence: Mapping[str, Any] = field(default_factory=dict)
    estimated_credits_exposed_micro: int = 0
    related_entities: tuple[str, ...] = ()
    plan: str | None = None
    grant_id: str | None = None
    suggested_action: str = ""
    # The rule's measure and the threshold it crossed, as numbers (the alert's ``observed``/``limit``).
    observed_value: float = 0.0
    limit_value: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["counter_signals"] = list(self.counter_signals)
        d["related_entities"] = list(self.related_entities)
        return d


class Detector(Generic[_S]):
    """Base class of the twelve rules. Subclasses set the class attributes and implement
    ``observe`` (O(1) state update per event) and ``evaluate`` (run at most every few events)."""

    # The rule's own state record (a ``RuleState``): its slot in the entity's state.
    state_type: type[_S]

    id: str = ""
    revision: int = 1
    name: str = ""
    # The entity kinds this rule watches: ("account",) or fingerprint kinds like ("device", "payment").
    entity_types: tuple[str, ...] = ("account",)
    signal: str = ""
    window: str = ""
    counter_signal_doc: str = ""
    suggested_action: str = ""
    defaults: Mapping[str, Any] = {}

    @property
    def entity_type(self) -> str:
        return "|".join(self.entity_types)

    def config(self, policy_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults overlaid with the policy file's ``[detectors.<id>]`` table, decimal strings turned
        into floats (they are thresholds and ratios, never credit amounts)."""
        merged = dict(self.defaults)
        if policy_cfg:
            merged.update(policy_cfg)
        cfg = {k: _number(v) for k, v in merged.items()}
        self.prepare(cfg)
        return cfg

    def prepare(self, cfg: dict[str, Any]) -> None:
        """Hook for precomputing derived settings once (not per event)."""

    def slot(self, state: State) -> _S:
        s = state.get(self.id)
        if s is None:
            s = state[self.id] = self.initial()
        return s  # type: ignore[no-any-return]

    def initial(self) -> _S:
        return self.state_type(revision=self.revision)

    def observe(self, state: State, obs: Obs, cfg: Cfg) -> None:
        raise NotImplementedError

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        raise NotImplementedError

    # -- helpers for subclasses -------------------------------------------------------------------

    def fire(
        self,
        state: State,
        cfg: Cfg,
        *,
        base: float,
        counters: list[tuple[str, float]],
        observed: str,
        limit: str,
        value: float,
        threshold: float,
        window_start: int,
        window_end: int,
        counts: Mapping[str, int],
        exposed_micro: int,
        entity_type: str = "account",
        entity_id: str | None = None,
        related: tuple[str, ...] = (),
        grant_id: str | None = None,
        credits_by_category: Mapping[str, int] | None = None,
        sample_ids: list[str] | None = None,
    ) -> Firing | None:
        """Apply counter-signals (each multiplies the score down) and decide. Returns None when the
        counter-signals pull the score under ``min_score``: that is how they prevent a firing."""
        score = base
        for _, factor in counters:
            score *= factor
        score = round(max(0.0, min(1.0, score)), 4)
        if score < float(cfg.get("min_score", 0.5)):
            return None
        common = common_of(state)
        return Firing(
            rule_id=self.id,
            rule_name=self.name,
            rule_revision=self.revision,
            entity_type=entity_type,
            entity_id=entity_id if entity_id is not None else common.entity_id,
            score=score,
            severity=severity_for(score),
            observed=observed,
            limit=limit,
            window_start=int(window_start),
            window_end=int(window_end),
            counter_signals=tuple(text for text, _ in counters),
            evidence={
                "counts": {k: int(v) for k, v in counts.items()},
                "credits_by_category": dict(
                    credits_by_category if credits_by_category is not None else window_credits(common)
                ),
                "sample_event_ids": list(sample_ids if sample_ids is not None else common.recent_event_ids)[
                    -SAMPLE_IDS:
                ],
            },
            estimated_credits_exposed_micro=int(exposed_micro),
            related_entities=related,
            plan=common.plan if entity_type == "account" else None,
            grant_id=grant_id,
            suggested_action=self.suggested_action,
            observed_value=float(value),
            limit_value=float(threshold),
        )


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            d = Decimal(value)
        except InvalidOperation:
            return value
        return int(d) if d == d.to_integral_value() and "." not in value else float(d)
    return value


def severity_for(score: float) -> str:
    if score >= 0.9:
        return "CRITICAL"
    if score >= 0.75:
        return "HIGH"
    if score >= 0.6:
        return "MEDIUM"
    return "LOW"


def ramp(value: float, at_limit: float, at_full: float) -> float:
    """Base score: 0.6 when the measure just reaches its limit, 1.0 at ``at_full`` and beyond, so a
    barely-crossed limit is a MEDIUM finding and a blatant one is CRITICAL."""
    if at_full == at_limit:
        return 1.0
    frac = (value - at_limit) / (at_full - at_limit)
    return 0.6 + 0.4 * max(0.0, min(1.0, frac))


def ratio_text(value: float, places: int = 3) -> str:
    return str(Decimal(repr(round(value, places))).normalize()) if value == value else "0"


def decimal_text(value: float) -> str:
    """A measure as the exact decimal string the GamingAlert schema carries (6 places at most)."""
    if value != value or value in (float("inf"), float("-inf")):
        return "0"
    text = format(Decimal(repr(round(value, 6))).normalize(), "f")
    return "0" if text in ("-0", "") else text


def credits_text(micro: int) -> str:
    return str((Decimal(micro) / MICRO).normalize())


# -- the common slot ------------------------------------------------------------------------------

class TwoBuckets(msgspec.Struct, gc=False):
    """Two-bucket sliding window of named counters (see ``bucket``): ``current`` counts bucket
    ``index``, ``previous`` the one before it. Rules pick the bucket width (a day, minutes)."""

    index: int | None = msgspec.field(name="b", default=None)
    current: dict[str, int] = msgspec.field(name="cur", default_factory=dict)
    previous: dict[str, int] = msgspec.field(name="prev", default_factory=dict)


class GrantSeen(msgspec.Struct, gc=False):
    """A grant of the account as the detectors know it: from its CreditGrant event (size and dates)
    and from the ledger's debits (spend, and the size again when the event was not seen)."""

    # Size in micro-credits; from the event, or at least spent + balance as the debits report it.
    amount_micro: int | None = msgspec.field(name="amt", default=None)
    granted_at: int | None = msgspec.field(name="gat", default=None)  # only once the grant event was seen
    expires_at: int | None = msgspec.field(name="exp", default=None)  # likewise
    spent_micro: int = msgspec.field(name="sp", default=0)
    # Event time of the debit that took spend to 80% / the balance to zero (fast depletion's measure).
    reached_80_percent_at: int | None = msgspec.field(name="t80", default=None)
    exhausted_at: int | None = msgspec.field(name="exh", default=None)
    # Grant time, or the first debit's time when the event was not seen: the oldest is evicted first.
    first_seen_at: int = msgspec.field(name="first", default=0)
    debits: int = msgspec.field(name="nd", default=0)  # one huge request emptying a grant is no pattern
    revoked_at: int | None = msgspec.field(name="rev", default=None)
    campaign: str | None = msgspec.field(name="camp", default=None)


class CommonState(msgspec.Struct, gc=False):
    """The slot every rule of an entity shares (``"_"``), kept by the engine. Every field has a
    default so that any state an earlier version wrote (even partial) loads."""

    entity_id: str = msgspec.field(name="id", default="")
    plan: str | None = None  # the account's latest plan: paying plans are counter-signals
    # Fingerprints only: "device" | "payment" | "prompt" (picks the rules; names the alert's entity).
    kind: str | None = None
    first_event_at: int | None = msgspec.field(name="first", default=None)
    last_event_at: int | None = msgspec.field(name="last", default=None)  # where a tail is evaluated
    events: int = msgspec.field(name="n", default=0)
    # Events since the last evaluation: the engine evaluates every ``eval_every_events`` of them,
    # and a tail (see rulebook.py) only when some are waiting.
    events_since_evaluation: int = msgspec.field(name="ne", default=0)
    # Event time of the last evaluation: alert times of an entity never go backwards; None = never.
    evaluated_at: int | None = msgspec.field(name="ea", default=None)
    # Flagged until this event time (after a firing, or for ever once a reviewer confirmed gaming):
    # flagged traffic does not train the rules' baselines.
    flagged_until: int = msgspec.field(name="flag", default=0)
    # Ring of the latest event ids: an alert's evidence (ids only, never content).
    recent_event_ids: list[str] = msgspec.field(name="ids", default_factory=list)
    # Charged micro-credits by category per day (two days), plus "sub" (the multipliers' subsidy)
    # and "gf" (grant-funded): what an alert says the programme paid for.
    credits_by_day: TwoBuckets = msgspec.field(name="win", default_factory=TwoBuckets)
    grants: dict[str, GrantSeen] = msgspec.field(name="g", default_factory=dict)  # grant id -> grant
    # First request within SIGNUP_MS of one of its grants being issued (see ``is_new_account``).
    new_account: bool = msgspec.field(name="new", default=False)


class RuleState(msgspec.Struct, gc=False):
    """Base of each rule's own state record (defined next to the rule)."""

    # The rule revision that wrote the state: a state of another revision is not loaded (the rule
    # starts afresh rather than misread it; see ``rulebook.decode_detector_state``).
    revision: int = msgspec.field(name="_r", default=1)


def common_of(state: State) -> CommonState:
    return state["_"]  # type: ignore[no-any-return]


def new_common(entity_id: str) -> CommonState:
    return CommonState(entity_id=entity_id)


def observe_common(common: CommonState, obs: Obs, with_grants: bool = True) -> None:
    t = int(obs["occurred_at"])
    common.plan = obs.get("plan") or common.plan
    if common.first_event_at is None or t < common.first_event_at:
        common.first_event_at = t
        if with_grants:
            _mark_new(common)
    if common.last_event_at is None or t > common.last_event_at:
        common.last_event_at = t
    common.events += 1
    common.events_since_evaluation += 1
    ids = common.recent_event_ids
    ids.append(obs["event_id"])
    if len(ids) > SAMPLE_IDS:
        del ids[0]
    charged = int(obs["charged_micro"])
    cur = bucket(common.credits_by_day, t // DAY_MS)
    cat = obs["category"]
    cur[cat] = cur.get(cat, 0) + charged
    cur["sub"] = cur.get("sub", 0) + int(obs["list_micro"]) - charged
    cur["gf"] = cur.get("gf", 0) + int(obs.get("grant_funded_micro") or 0)
    debits = obs.get("debits") if with_grants else None
    if debits:
        grants = common.grants
        for gid, amount, balance in debits:
            g = grants.get(gid)
            if g is None:
                g = grants[gid] = GrantSeen(first_seen_at=t)
                cap_map(grants, 16, _first_seen)
            g.spent_micro += int(amount)
            g.debits += 1
            if g.amount_micro is None or g.amount_micro < g.spent_micro + int(balance):
                # Without the grant event we still know its size from the ledger's balance.
                g.amount_micro = g.spent_micro + int(balance)
            if g.reached_80_percent_at is None and g.spent_micro * 5 >= g.amount_micro * 4:
                g.reached_80_percent_at = t
            if int(balance) == 0 and g.exhausted_at is None:
                g.exhausted_at = t


def _first_seen(g: GrantSeen) -> int:
    return g.first_seen_at


def observe_grant_common(common: CommonState, grant: Mapping[str, Any]) -> None:
    gid = grant["grant_id"]
    grants = common.grants
    g = grants.get(gid)
    if grant["event_type"] == "REVOKED":
        if g is not None:
            g.revoked_at = int(grant["occurred_at"])
        return
    if g is None:
        g = grants[gid] = GrantSeen(first_seen_at=int(grant["granted_at"]))
    g.amount_micro = int(grant["amount_micro"])
    g.granted_at = int(grant["granted_at"])
    g.expires_at = int(grant["expires_at"])
    g.campaign = grant.get("campaign")
    cap_map(grants, 16, _first_seen)
    _mark_new(common)


def is_new_account(common: CommonState) -> bool:
    """The account's first request came within ``SIGNUP_MS`` of one of its grants being issued: a
    sign-up redeeming a welcome grant, not merely our first sight of an old account. Decided when
    the first request or a grant is seen (``_mark_new``), so reading it costs one lookup."""
    return common.new_account


def _mark_new(common: CommonState) -> None:
    first = common.first_event_at
    common.new_account = first is not None and any(
        g.granted_at is not None and 0 <= first - g.granted_at <= SIGNUP_MS for g in common.grants.values())


def plan_counters(common: CommonState, paid_factor: float, org_factor: float | None = None
                  ) -> list[tuple[str, float]]:
    """Counter-signals of a paying account: automation, heavy use and shared seats are what paid
    plans are for, and the programme's exposure is small when the subscription pays."""
    plan = common.plan
    out: list[tuple[str, float]] = []
    if plan in ORG_PLANS and org_factor is not None:
        out.append((f"{plan} plan (an organisation's automation and shared seats)", org_factor))
    elif plan in PAID_PLANS:
        out.append((f"{plan} plan (a paying customer)", paid_factor))
    if plan in PAID_PLANS and subscription_funded(common):
        out.append(("mostly subscription-funded usage", 0.7))
    return out


def subscription_funded(common: CommonState) -> bool:
    charged = sum(window_total(common, c) for c in CATEGORIES)
    return charged > 0 and window_total(common, "gf") * 2 < charged


def window_credits(common: CommonState) -> dict[str, int]:
    win = common.credits_by_day
    out: dict[str, int] = {}
    for part in (win.previous, win.current):
        for k, v in part.items():
            if k in CATEGORIES:
                out[k] = out.get(k, 0) + int(v)
    return out


def window_total(common: CommonState, key: str) -> int:
    return both(common.credits_by_day, key)


def window_exposed(common: CommonState) -> int:
    """Credits the programme paid for in the window: grant-funded debits plus the multiplier
    subsidy. That is what is lost if the usage is gaming."""
    return window_total(common, "gf") + window_total(common, "sub")


# -- bounded-state helpers ------------------------------------------------------------------------

def bucket(win: TwoBuckets, index: int) -> dict[str, int]:
    """Two-bucket sliding window: ``current`` is the bucket ``index``, ``previous`` the one before.
    Returns ``current``. A late event (older bucket) is added to ``current`` rather than reopening
    history."""
    b = win.index
    if b is None:
        win.index = index
    elif index > b:
        win.previous = win.current if index == b + 1 else {}
        win.current = {}
        win.index = index
    return win.current


def both(win: TwoBuckets, key: str) -> int:
    return int(win.previous.get(key, 0)) + int(win.current.get(key, 0))


_K = TypeVar("_K")
_E = TypeVar("_E")


def cap_map(m: MutableMapping[_K, _E], cap: int, age: Callable[[_E], Any]) -> None:
    """Keep at most ``cap`` entries, evicting the one with the smallest ``age(value)``: the oldest."""
    while len(m) > cap:
        del m[min(m, key=lambda k: age(m[k]))]
