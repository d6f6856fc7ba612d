"""Labelled credit-gaming scenarios on top of the synthetic generator: one scenario per detector
(gamer accounts doing that thing), genuine cohorts with human rhythms, decoys that look unusual but
are legitimate, and adversarial variants (jittered timing, rotating IPs) that are reported apart.

Deterministic for a seed. Events and grants have the same shape as ``streams.synthetic.generator`` output, so
the set can be produced to Kafka as-is or run in process (``streams.synthetic.in_process``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streams.synthetic.generator import DAY_MS, HOUR_MS, Account, Generator, _h

MINUTE_MS = 60_000
GENUINE, GAMER, DECOY, ADVERSARIAL = "genuine", "gamer", "decoy", "adversarial"


@dataclass(frozen=True, slots=True)
class Label:
    scenario: str
    is_gamer: bool
    expected_rule_ids: frozenset[str]
    kind: str  # genuine | gamer | decoy | adversarial


@dataclass
class ScenarioSet:
    events: list[dict[str, Any]]
    grants: list[dict[str, Any]]
    labels: dict[str, Label]  # account id -> label
    start_ms: int
    end_ms: int
    seed: int
    size: str


@dataclass(frozen=True, slots=True)
class Size:
    background_accounts: int
    background_events: int
    gamers: int  # gamer accounts (or rings) per scenario
    decoys: int  # decoy accounts (or groups) per decoy type
    days: int


SIZES = {
    "small": Size(background_accounts=200, background_events=2500, gamers=3, decoys=3, days=5),
    "default": Size(background_accounts=1000, background_events=20000, gamers=8, decoys=6, days=6),
}


@dataclass
class _Builder:
    seed: int
    size: Size
    start_ms: int
    rng: random.Random = field(init=False)
    # A generator used only as an event factory: its _event gives realistic field values that each
    # scenario then bends, so scenarios never re-implement event construction.
    factory: Generator = field(init=False)
    events: list[dict[str, Any]] = field(default_factory=list)
    grants: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, Label] = field(default_factory=dict)
    # Account ids start with this, so a run's accounts can be told apart (as Generator's are).
    account_prefix: str = ""
    _n: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed * 7919 + 17)
        self.factory = Generator(accounts=1, seed=self.seed + 1000, start_ms=self.start_ms)

    # -- building blocks --------------------------------------------------------------------------

    def account(self, scenario: str, plan: str, label: str, expected: tuple[str, ...] = (), *,
                leaning: str = "chat", device: str | None = None, ip: str | None = None,
                payment: str | None = None, team: str | None = None) -> Account:
        self._n += 1
        aid = f"{self.account_prefix}u-{self.seed}-{self._n:05d}"
        acct = Account(
            account_id=aid, plan=plan, team_id=team, org_id=f"org-{team}" if team else None,
            ip_hash=ip or _h(f"ip-{aid}"), device_hash=device or _h(f"dev-{aid}"),
            payment_hash=payment if payment is not None else (_h(f"pay-{aid}") if plan != "FREE" else None),
            timezone_shift_h=self.rng.choice((-8, -5, 0, 1, 5, 8)), leaning=leaning,
        )
        self.labels[aid] = Label(scenario, label in (GAMER, ADVERSARIAL), frozenset(expected), label)
        return acct

    def grant(self, acct: Account, credits: int, granted_at: int, expires_at: int) -> str:
        gid = f"grant-{acct.account_id}-{len(self.grants)}"
        self.grants.append({
            "event_type": "ISSUED", "grant_id": gid, "account_id": acct.account_id,
            "campaign": "launch-2026", "amount_micro": credits * 1_000_000, "granted_at": granted_at,
            "expires_at": expires_at, "priority": 0, "occurred_at": granted_at, "reason": None,
        })
        return gid

    def emit(self, acct: Account, t: int, **overrides: Any) -> dict[str, Any]:
        acct.sessions += 1
        model = overrides.pop("model", None) or self.rng.choices(
            ("atlas-small", "atlas-medium", "atlas-large"), (0.4, 0.45, 0.15))[0]
        ev = self.factory._event(acct, f"{acct.account_id}-s{acct.sessions}", 0, t, model)
        ev.update(overrides)
        ev["event_id"] = _h(f"{acct.account_id}-{t}-{acct.sessions}")
        self.events.append(ev)
        return ev

    def human_times(self, acct: Account, start: int, days: float, sessions_per_day: float) -> list[int]:
        """Session starts in local waking hours, a few turns each: the rhythm genuine people have."""
        out: list[int] = []
        remaining = max(1, round(days * sessions_per_day))
        end = start + int(days * DAY_MS)
        while remaining > 0:
            t = self.rng.randrange(start, end)
            local = ((t // HOUR_MS) + acct.timezone_shift_h) % 24
            if not 8 <= local <= 23:
                continue
            for _ in range(self.rng.randint(1, 5)):
                out.append(t)
                t += self.rng.randint(5_000, 120_000)
            remaining -= 1
        return sorted(out)

    # -- normal-looking request shapes ------------------------------------------------------------

    def chat(self) -> dict[str, Any]:
        return {"context_window_tokens": self.rng.randint(500, 20_000), "reasoning_steps": 0,
                "thinking_tokens": 0, "tool_calls": 0, "tool_names": [], "context_uniqueness": None,
                "input_tokens": self.rng.randint(200, 4_000), "output_tokens": self.rng.randint(50, 1_500),
                "outcome": "SUCCESS", "error_code": None}

    def long_doc(self, lo: int = 150_000, hi: int = 350_000) -> dict[str, Any]:
        ctx = self.rng.randint(lo, hi)
        return {"context_window_tokens": ctx, "input_tokens": ctx // 2 + self.rng.randint(0, 4_000),
                "output_tokens": self.rng.randint(400, 3_000), "context_uniqueness": round(
                    self.rng.uniform(0.6, 1.0), 3), "reasoning_steps": 0, "thinking_tokens": 0,
                "tool_calls": 0, "tool_names": [], "outcome": "SUCCESS", "error_code": None}


# -- gamer scenarios ------------------------------------------------------------------------------

def _round_the_clock(b: _Builder, adversarial: bool = False) -> None:
    name = "adv_round_the_clock_rotating_ips" if adversarial else "round_the_clock"
    for _ in range(b.size.gamers):
        a = b.account(name, "FREE", ADVERSARIAL if adversarial else GAMER, ("CF-001",))
        start = b.start_ms + DAY_MS + b.rng.randrange(6 * HOUR_MS)
        b.grant(a, 25, start - HOUR_MS, start + 20 * DAY_MS)
        t = start
        while t < start + 30 * HOUR_MS:
            extra = {"ip_hash": _h(f"rot-{a.account_id}-{t}")} if adversarial else {}
            b.emit(a, t, **b.chat(), **extra)
            t += int(b.rng.expovariate(1 / (12 * MINUTE_MS))) + 30_000


def _cadence(b: _Builder, adversarial: bool = False) -> None:
    name = "adv_cadence_jittered" if adversarial else "cadence"
    for _ in range(b.size.gamers):
        a = b.account(name, "FREE", ADVERSARIAL if adversarial else GAMER, ("CF-002",))
        b.grant(a, 25, b.start_ms - DAY_MS, b.start_ms + 20 * DAY_MS)
        for s in range(3):
            t = b.start_ms + s * DAY_MS + b.rng.randrange(2 * HOUR_MS, 12 * HOUR_MS)
            for _ in range(45):
                b.emit(a, t, **b.chat())
                t += b.rng.randint(45_000, 105_000) if adversarial else 75_000 + b.rng.randint(-2_000, 2_000)


def _depletion(b: _Builder) -> None:
    for _ in range(b.size.gamers):
        a = b.account("depletion", "FREE", GAMER, ("CF-003",), leaning="long")
        t = b.start_ms + DAY_MS + b.rng.randrange(DAY_MS)
        b.grant(a, 25, t, t + 30 * DAY_MS)
        t += 10 * MINUTE_MS
        for _ in range(40):
            b.emit(a, t, model="atlas-large", **b.long_doc())
            t += b.rng.randint(3 * MINUTE_MS, 8 * MINUTE_MS)


def _farming(b: _Builder, adversarial: bool = False) -> None:
    name = "adv_farming_rotating_ips" if adversarial else "farming"
    for ring in range(max(1, b.size.gamers // 2)):
        device = _h(f"farm-dev-{b.seed}-{name}-{ring}")
        for _ in range(5):
            a = b.account(name, "FREE", ADVERSARIAL if adversarial else GAMER, ("CF-004",), device=device)
            b.grant(a, 5, b.start_ms - DAY_MS, b.start_ms + 20 * DAY_MS)
            for t in b.human_times(a, b.start_ms, 3, 4):
                extra = {"ip_hash": _h(f"rot-{a.account_id}-{t}")} if adversarial else {}
                b.emit(a, t, **b.chat(), **extra)


def _trial_cycling(b: _Builder) -> None:
    for ring in range(max(1, b.size.gamers // 2)):
        device = _h(f"cycle-dev-{b.seed}-{ring}")
        t = b.start_ms + b.rng.randrange(6 * HOUR_MS)
        for _ in range(3):
            a = b.account("trial_cycling", "FREE", GAMER, ("CF-005",), device=device)
            b.grant(a, 3, t - MINUTE_MS, t + 30 * DAY_MS)
            for _ in range(8):  # a 3-credit grant is gone after a handful of long-document requests
                b.emit(a, t, model="atlas-large", **b.long_doc())
                t += b.rng.randint(20 * MINUTE_MS, 90 * MINUTE_MS)
            t += b.rng.randint(2 * HOUR_MS, 10 * HOUR_MS)


def _padding(b: _Builder) -> None:
    for _ in range(b.size.gamers):
        a = b.account("padding", "FREE", GAMER, ("CF-006",))
        b.grant(a, 25, b.start_ms - DAY_MS, b.start_ms + 20 * DAY_MS)
        for t in b.human_times(a, b.start_ms + DAY_MS, 1.5, 12):
            ctx = b.rng.randint(100_000, 108_000)
            b.emit(a, t, context_window_tokens=ctx, input_tokens=ctx - b.rng.randint(0, 2_000),
                   output_tokens=b.rng.randint(20, 150),
                   context_uniqueness=round(b.rng.uniform(0.05, 0.3), 3),
                   reasoning_steps=0, thinking_tokens=0, tool_calls=0, tool_names=[],
                   outcome="SUCCESS", error_code=None)


def _category_skew(b: _Builder) -> None:
    for _ in range(b.size.gamers):
        a = b.account("category_skew", "FREE", GAMER, ("CF-007",))
        b.grant(a, 25, b.start_ms - DAY_MS, b.start_ms + 20 * DAY_MS)
        for t in b.human_times(a, b.start_ms + DAY_MS, 1.5, 14):
            shape = b.chat()
            shape["output_tokens"] = b.rng.randint(20, 250)
            roll = b.rng.random()
            if roll < 0.5:
                shape.update(tool_calls=1, tool_names=["http_get"])
            elif roll < 0.95:
                shape.update(reasoning_steps=3, thinking_tokens=b.rng.randint(200, 1_500))
            b.emit(a, t, **shape)


def _replayed(b: _Builder) -> None:
    for i in range(b.size.gamers):
        a = b.account("replayed_prompts", "FREE", GAMER, ("CF-008",))
        b.grant(a, 25, b.start_ms - DAY_MS, b.start_ms + 20 * DAY_MS)
        fp = _h(f"replay-{b.seed}-{i}")
        for t in b.human_times(a, b.start_ms + DAY_MS, 2, 10):
            shape = b.chat()
            shape.update(reasoning_steps=b.rng.randint(3, 6), thinking_tokens=b.rng.randint(1_000, 8_000))
            b.emit(a, t, prompt_fingerprint=fp if b.rng.random() < 0.8 else _h(f"p-{t}"), **shape)


def _burn_before_expiry(b: _Builder) -> None:
    days = b.size.days
    for _ in range(b.size.gamers):
        a = b.account("burn_before_expiry", "FREE", GAMER, ("CF-009",))
        exp = b.start_ms + days * DAY_MS
        b.grant(a, 60, b.start_ms - 5 * DAY_MS, exp)
        for t in b.human_times(a, b.start_ms, days - 2, 4):
            b.emit(a, t, model="atlas-small", **b.chat())
        for t in b.human_times(a, exp - 2 * DAY_MS, 1.8, 8):
            b.emit(a, t, model="atlas-large", **b.long_doc())


def _probing(b: _Builder) -> None:
    for _ in range(b.size.gamers):
        a = b.account("probing", "FREE", GAMER, ("CF-010",))
        b.grant(a, 10, b.start_ms - DAY_MS, b.start_ms + 20 * DAY_MS)
        for t in b.human_times(a, b.start_ms, 2, 3):
            b.emit(a, t, **b.chat())
        t = b.start_ms + 2 * DAY_MS + b.rng.randrange(DAY_MS)
        for _ in range(40):
            shape = b.chat()
            if b.rng.random() < 0.85:
                outcome = b.rng.choice(("REFUSED", "ERROR"))
                shape.update(outcome=outcome, output_tokens=0,
                             error_code="E_REFUSED" if outcome == "REFUSED" else "E_INVALID_REQUEST")
            b.emit(a, t, **shape)
            t += b.rng.randint(5_000, 20_000)


def _spike(b: _Builder) -> None:
    for _ in range(b.size.gamers):
        a = b.account("spike", "FREE", GAMER, ("CF-011",))
        b.grant(a, 100, b.start_ms - 10 * DAY_MS, b.start_ms + 20 * DAY_MS)
        for t in b.human_times(a, b.start_ms, 2.5, 6):
            b.emit(a, t, model="atlas-small", **b.chat())
        t = b.start_ms + int(2.6 * DAY_MS) + b.rng.randrange(6 * HOUR_MS)
        for _ in range(45):
            b.emit(a, t, model="atlas-large", **b.long_doc(250_000, 400_000))
            t += b.rng.randint(40_000, 80_000)


def _sharing(b: _Builder, adversarial: bool = False) -> None:
    name = "adv_sharing_rotating_ips" if adversarial else "account_sharing"
    for _ in range(b.size.gamers):
        a = b.account(name, "FREE", ADVERSARIAL if adversarial else GAMER, ("CF-012",))
        b.grant(a, 25, b.start_ms - DAY_MS, b.start_ms + 20 * DAY_MS)
        devices = [_h(f"share-dev-{a.account_id}-{k}") for k in range(6)]
        ips = [_h(f"share-ip-{a.account_id}-{k}") for k in range(5)]
        for t in b.human_times(a, b.start_ms + DAY_MS, 1, 16):
            k = b.rng.randrange(6)
            ip = _h(f"rot-{a.account_id}-{t}") if adversarial else ips[k % 5]
            b.emit(a, t, device_hash=devices[k], ip_hash=ip, **b.chat())


# -- decoys ---------------------------------------------------------------------------------------

def _power_users(b: _Builder) -> None:
    """Excited new paying users: a fresh grant, many hours a day, every feature, then they keep going."""
    for _ in range(b.size.decoys):
        a = b.account("decoy_power_user", b.rng.choice(("PRO", "MAX")), DECOY,
                      leaning=b.rng.choice(("long", "reasoning", "tools")))
        start = b.start_ms + DAY_MS
        b.grant(a, 25, start, start + 30 * DAY_MS)
        for t in b.human_times(a, start, b.size.days - 1, 25):
            ev = b.emit(a, t)
            ev.update(outcome="SUCCESS", error_code=None)


def _families(b: _Builder) -> None:
    for g in range(b.size.decoys):
        ip = _h(f"family-ip-{b.seed}-{g}")
        for _ in range(4):
            a = b.account("decoy_family_shared_ip", "FREE", DECOY, ip=ip)
            b.grant(a, 5, b.start_ms - DAY_MS, b.start_ms + 20 * DAY_MS)
            for t in b.human_times(a, b.start_ms, b.size.days, 2):
                b.emit(a, t)


def _office(b: _Builder) -> None:
    for g in range(max(1, b.size.decoys // 2)):
        ip = _h(f"office-ip-{b.seed}-{g}")
        card = _h(f"office-card-{b.seed}-{g}")
        for _ in range(8):
            a = b.account("decoy_office_team", "TEAM", DECOY, ip=ip, payment=card, team=f"t{b.seed}{g}",
                          leaning=b.rng.choice(("chat", "tools", "reasoning")))
            b.grant(a, 10, b.start_ms - DAY_MS, b.start_ms + 20 * DAY_MS)
            for t in b.human_times(a, b.start_ms, b.size.days, 4):
                b.emit(a, t)


def _enterprise_tools(b: _Builder) -> None:
    """Heavy but legitimate: agent loops firing tool calls every few seconds, all working day."""
    for _ in range(b.size.decoys):
        a = b.account("decoy_enterprise_tools", "ENTERPRISE", DECOY, leaning="tools", team="ent")
        b.grant(a, 50, b.start_ms - DAY_MS, b.start_ms + 20 * DAY_MS)
        for t0 in b.human_times(a, b.start_ms, b.size.days, 1.5):
            t = t0
            for _ in range(b.rng.randint(8, 20)):
                shape = b.chat()
                n = b.rng.randint(1, 8)
                shape.update(tool_calls=n, tool_names=["sql", "http_get"][: min(n, 2)],
                             output_tokens=b.rng.randint(100, 2_000))
                b.emit(a, t, **shape)
                t += b.rng.randint(4_000, 8_000)


GAMER_SCENARIOS: dict[str, Callable[[_Builder], None]] = {
    "round_the_clock": _round_the_clock,
    "cadence": _cadence,
    "depletion": _depletion,
    "farming": _farming,
    "trial_cycling": _trial_cycling,
    "padding": _padding,
    "category_skew": _category_skew,
    "replayed_prompts": _replayed,
    "burn_before_expiry": _burn_before_expiry,
    "probing": _probing,
    "spike": _spike,
    "account_sharing": _sharing,
}
# The rule each gamer scenario exists to exercise.
SCENARIO_RULE = {"round_the_clock": "CF-001", "cadence": "CF-002", "depletion": "CF-003", "farming": "CF-004",
                 "trial_cycling": "CF-005", "padding": "CF-006", "category_skew": "CF-007",
                 "replayed_prompts": "CF-008", "burn_before_expiry": "CF-009", "probing": "CF-010",
                 "spike": "CF-011", "account_sharing": "CF-012"}
DECOYS: dict[str, Callable[[_Builder], None]] = {
    "decoy_power_user": _power_users,
    "decoy_family_shared_ip": _families,
    "decoy_office_team": _office,
    "decoy_enterprise_tools": _enterprise_tools,
}
ADVERSARIAL_SCENARIOS: dict[str, Callable[[_Builder], None]] = {
    "adv_round_the_clock_rotating_ips": lambda b: _round_the_clock(b, adversarial=True),
    "adv_cadence_jittered": lambda b: _cadence(b, adversarial=True),
    "adv_farming_rotating_ips": lambda b: _farming(b, adversarial=True),
    "adv_sharing_rotating_ips": lambda b: _sharing(b, adversarial=True),
}


def build(size: str = "small", seed: int = 11, start_ms: int = 1_793_000_000_000,
          adversarial: bool = True) -> ScenarioSet:
    """The labelled set: genuine background traffic from ``Generator`` plus every scenario."""
    sz = SIZES[size]
    background = Generator(accounts=sz.background_accounts, seed=seed, start_ms=start_ms,
                           span_ms=sz.days * DAY_MS)
    events = list(background.events(sz.background_events))
    grants = background.grants()
    labels = {acct.account_id: Label("genuine", False, frozenset(), GENUINE)
              for acct in background.account_list}
    b = _Builder(seed=seed, size=sz, start_ms=start_ms)
    for fn in (*GAMER_SCENARIOS.values(), *DECOYS.values()):
        fn(b)
    if adversarial:
        for fn in ADVERSARIAL_SCENARIOS.values():
            fn(b)
    events += b.events
    grants += b.grants
    labels.update(b.labels)
    events.sort(key=lambda e: (e["occurred_at"], e["event_id"]))
    end = max(e["occurred_at"] for e in events) + 1
    return ScenarioSet(events, grants, labels, start_ms, end, seed, size)


def gaming_sample(names: tuple[str, ...], seed: int, start_ms: int, account_prefix: str = "",
                  size: str = "small") -> ScenarioSet:
    """Only the named gamer scenarios, labelled, without background or decoys: gaming to mix into
    other traffic (the demo does)."""
    unknown = [n for n in names if n not in GAMER_SCENARIOS]
    if unknown:
        raise ValueError(f"unknown gamer scenarios {unknown}; known: {sorted(GAMER_SCENARIOS)}")
    b = _Builder(seed=seed, size=SIZES[size], start_ms=start_ms, account_prefix=account_prefix)
    for name in names:
        GAMER_SCENARIOS[name](b)
    events = sorted(b.events, key=lambda e: (e["occurred_at"], e["event_id"]))
    end = max((e["occurred_at"] for e in events), default=start_ms) + 1
    return ScenarioSet(events, b.grants, b.labels, start_ms, end, seed, size)
