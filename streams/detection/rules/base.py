"""What every credit-gaming detector shares: the Detector contract, the Firing it produces, the
account-wide "common" slot the engine maintains, and small bounded-state helpers.

State is always a plain JSON-able dict (it lives in a changelog-backed Faust table), so:
- keys are strings (a JSON round trip turns int keys into strings, so we never use int keys);
- every collection is capped (ring buffers, top-k, capped maps evicting the oldest entry);
- credits are integer micro-credits; only scores and ratios are floats.

Layout of an account state (``engine.new_account_state``)::

    {"_": common, "CF-001": {...}, "CF-002": {...}, ...}   # one slot per detector id

and of a fingerprint state (``engine.new_fingerprint_state(kind)``)::

    {"_": {"kind": "device"|"payment"|"prompt", "n": int, "ne": int, "ea": ms}, "CF-004": {...}, ...}
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

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

State = dict[str, Any]
Obs = Mapping[str, Any]
Cfg = Mapping[str, Any]


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


class Detector:
    """Base class of the twelve rules. Subclasses set the class attributes and implement
    ``observe`` (O(1) state update per event) and ``evaluate`` (run at most every few events)."""

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

    def slot(self, state: State) -> State:
        s = state.get(self.id)
        if s is None or s.get("_r", 1) != self.revision:
            # A new revision may keep its state differently: it starts afresh rather than misread it.
            s = state[self.id] = self.initial()
            if self.revision != 1:
                s["_r"] = self.revision
        return s  # type: ignore[no-any-return]

    def initial(self) -> State:
        return {}

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
        common = state["_"]
        return Firing(
            rule_id=self.id,
            rule_name=self.name,
            rule_revision=self.revision,
            entity_type=entity_type,
            entity_id=entity_id if entity_id is not None else common.get("id", ""),
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
                "sample_event_ids": list(sample_ids if sample_ids is not None else common.get("ids", []))[
                    -SAMPLE_IDS:
                ],
            },
            estimated_credits_exposed_micro=int(exposed_micro),
            related_entities=related,
            plan=common.get("plan") if entity_type == "account" else None,
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

def new_common(entity_id: str) -> State:
    return {
        "id": entity_id,
        "plan": None,
        "first": None,  # first event time seen
        "last": None,
        "n": 0,  # events seen
        "ne": 0,  # events since the last evaluation
        "ea": None,  # event time of the last evaluation
        "flag": 0,  # flagged until (event time): flagged traffic does not train baselines
        "ids": [],  # ring of recent event ids (evidence; never content)
        # Two day-buckets of charged micro-credits by category plus subsidy / grant-funded totals.
        "win": {"b": None, "cur": {}, "prev": {}},
        # Grants seen on this account: gid -> {"amt", "gat", "exp", "sp", "t80", "exh", "first", "nd"}
        # (gat/exp only once the grant event was observed; nd = number of debits)
        "g": {},
    }


def observe_common(common: State, obs: Obs, with_grants: bool = True) -> None:
    t = int(obs["occurred_at"])
    common["plan"] = obs.get("plan") or common["plan"]
    if common["first"] is None or t < common["first"]:
        common["first"] = t
        if with_grants:
            _mark_new(common)
    if common["last"] is None or t > common["last"]:
        common["last"] = t
    common["n"] += 1
    common["ne"] += 1
    ids = common["ids"]
    ids.append(obs["event_id"])
    if len(ids) > SAMPLE_IDS:
        del ids[0]
    charged = int(obs["charged_micro"])
    cur = bucket(common["win"], t // DAY_MS)
    cat = obs["category"]
    cur[cat] = cur.get(cat, 0) + charged
    cur["sub"] = cur.get("sub", 0) + int(obs["list_micro"]) - charged
    cur["gf"] = cur.get("gf", 0) + int(obs.get("grant_funded_micro") or 0)
    debits = obs.get("debits") if with_grants else None
    if debits:
        grants = common["g"]
        for gid, amount, balance in debits:
            g = grants.get(gid)
            if g is None:
                g = grants[gid] = {"amt": None, "gat": None, "exp": None, "sp": 0, "t80": None, "exh": None,
                                   "first": t}
                cap_map(grants, 16, "first")
            g["sp"] += int(amount)
            g["nd"] = g.get("nd", 0) + 1
            if g["amt"] is None or g["amt"] < g["sp"] + int(balance):
                # Without the grant event we still know its size from the ledger's balance.
                g["amt"] = g["sp"] + int(balance)
            if g["t80"] is None and g["sp"] * 5 >= g["amt"] * 4:
                g["t80"] = t
            if int(balance) == 0 and g["exh"] is None:
                g["exh"] = t


def observe_grant_common(common: State, grant: Mapping[str, Any]) -> None:
    gid = grant["grant_id"]
    grants = common["g"]
    g = grants.get(gid)
    if grant["event_type"] == "REVOKED":
        if g is not None:
            g["rev"] = int(grant["occurred_at"])
        return
    if g is None:
        g = grants[gid] = {"amt": None, "gat": None, "exp": None, "sp": 0, "t80": None, "exh": None,
                           "first": int(grant["granted_at"])}
    g["amt"] = int(grant["amount_micro"])
    g["gat"] = int(grant["granted_at"])
    g["exp"] = int(grant["expires_at"])
    g["camp"] = grant.get("campaign")
    cap_map(grants, 16, "first")
    _mark_new(common)




def is_new_account(common: State) -> bool:
    """The account's first request came within ``SIGNUP_MS`` of one of its grants being issued: a
    sign-up redeeming a welcome grant, not merely our first sight of an old account. Decided when
    the first request or a grant is seen (``_mark_new``), so reading it costs one lookup."""
    return bool(common.get("new"))


def _mark_new(common: State) -> None:
    first = common.get("first")
    common["new"] = first is not None and any(
        g.get("gat") is not None and 0 <= first - g["gat"] <= SIGNUP_MS for g in common["g"].values())


def plan_counters(common: State, paid_factor: float, org_factor: float | None = None) -> list[tuple[str, float]]:
    """Counter-signals of a paying account: automation, heavy use and shared seats are what paid
    plans are for, and the programme's exposure is small when the subscription pays."""
    plan = common.get("plan")
    out: list[tuple[str, float]] = []
    if plan in ORG_PLANS and org_factor is not None:
        out.append((f"{plan} plan (an organisation's automation and shared seats)", org_factor))
    elif plan in PAID_PLANS:
        out.append((f"{plan} plan (a paying customer)", paid_factor))
    if plan in PAID_PLANS and subscription_funded(common):
        out.append(("mostly subscription-funded usage", 0.7))
    return out


def subscription_funded(common: State) -> bool:
    charged = sum(window_total(common, c) for c in CATEGORIES)
    return charged > 0 and window_total(common, "gf") * 2 < charged


def window_credits(common: State) -> dict[str, int]:
    win = common["win"]
    out: dict[str, int] = {}
    for part in (win["prev"], win["cur"]):
        for k, v in part.items():
            if k in CATEGORIES:
                out[k] = out.get(k, 0) + int(v)
    return out


def window_total(common: State, key: str) -> int:
    win = common["win"]
    return int(win["prev"].get(key, 0)) + int(win["cur"].get(key, 0))


def window_exposed(common: State) -> int:
    """Credits the programme paid for in the window: grant-funded debits plus the multiplier
    subsidy. That is what is lost if the usage is gaming."""
    return window_total(common, "gf") + window_total(common, "sub")


# -- bounded-state helpers ------------------------------------------------------------------------

def bucket(win: State, index: int) -> State:
    """Two-bucket sliding window: ``cur`` is the bucket ``index``, ``prev`` the one before. Returns
    ``cur``. A late event (older bucket) is added to ``cur`` rather than reopening history."""
    b = win["b"]
    if b is None:
        win["b"] = index
    elif index > b:
        win["prev"] = win["cur"] if index == b + 1 else {}
        win["cur"] = {}
        win["b"] = index
    return win["cur"]  # type: ignore[no-any-return]


def both(win: State, key: str) -> int:
    return int(win["prev"].get(key, 0)) + int(win["cur"].get(key, 0))


def cap_map(m: MutableMapping[str, Any], cap: int, key: str | int | None = None) -> None:
    """Keep at most ``cap`` entries, evicting the one with the smallest value (or the smallest
    value[key] for dict entries / value[index] for list entries): the oldest, by convention."""
    while len(m) > cap:
        if key is None:
            victim = min(m, key=lambda k: m[k])
        else:
            victim = min(m, key=lambda k: m[k][key] if m[k][key] is not None else 0)
        del m[victim]
