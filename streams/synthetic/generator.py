"""Synthetic, realistic platform traffic: many accounts on different plans, the four feature
categories in believable proportions, a diurnal rhythm, sessions of several turns, and credit grants.

Deterministic for a seed, so tests and benchmarks can recompute what they sent.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from schemas.contracts import PLAN_SYMBOLS

PLANS = PLAN_SYMBOLS
PLAN_WEIGHTS = (0.45, 0.25, 0.1, 0.12, 0.08)
MODELS = ("atlas-small", "atlas-medium", "atlas-large")
SURFACES = ("API", "CHAT", "AGENT", "IDE")
TOOLS = ("web_search", "code_exec", "file_read", "calendar", "sql", "http_get")
CAMPAIGNS = ("launch-2026", "student-pack", "dev-week", "reactivation")
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def _h(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


@dataclass
class Account:
    account_id: str
    plan: str
    team_id: str | None
    org_id: str | None
    ip_hash: str
    device_hash: str
    payment_hash: str | None
    timezone_shift_h: int
    # What this account mostly does: shifts the category mix per account, like real users.
    leaning: str
    sessions: int = 0


@dataclass
class Generator:
    accounts: int = 500
    seed: int = 7
    start_ms: int = 1_793_000_000_000  # 2026-10-25, a fixed instant so runs are reproducible
    span_ms: int = DAY_MS
    grant_share: float = 0.6
    # Ids start with this, so one run's accounts can be told apart from another's.
    account_prefix: str = ""
    _rng: random.Random = field(init=False, repr=False)
    _accounts: list[Account] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        rng = self._rng
        self._accounts = []
        for i in range(self.accounts):
            plan = rng.choices(PLANS, PLAN_WEIGHTS)[0]
            team = f"team-{i // 7:04d}" if plan in ("TEAM", "ENTERPRISE") or rng.random() < 0.1 else None
            self._accounts.append(
                Account(
                    account_id=f"{self.account_prefix or f'acct-{self.seed}'}-{i:06d}",
                    plan=plan,
                    team_id=team,
                    org_id=f"org-{i // 40:03d}" if team else None,
                    ip_hash=_h(f"ip-{self.seed}-{i}"),
                    device_hash=_h(f"dev-{self.seed}-{i}"),
                    payment_hash=_h(f"pay-{self.seed}-{i}") if plan != "FREE" else None,
                    timezone_shift_h=rng.choice((-8, -5, 0, 1, 5, 8, 9)),
                    leaning=rng.choices(("chat", "tools", "reasoning", "long"), (0.5, 0.2, 0.2, 0.1))[0],
                )
            )

    @property
    def account_list(self) -> list[Account]:
        return self._accounts

    def grants(self) -> list[dict[str, Any]]:
        """CreditGrant ISSUED events for a share of the accounts, issued before the traffic starts."""
        rng = random.Random(self.seed * 31 + 1)
        out: list[dict[str, Any]] = []
        for acct in self._accounts:
            if rng.random() >= self.grant_share:
                continue
            for j in range(rng.choice((1, 1, 2))):
                granted = self.start_ms - rng.randint(1, 20) * DAY_MS
                out.append(
                    {
                        "event_type": "ISSUED",
                        "grant_id": f"grant-{acct.account_id}-{j}",
                        "account_id": acct.account_id,
                        "campaign": rng.choice(CAMPAIGNS),
                        # Small enough that busy accounts exhaust grants mid-stream (both funding paths).
                        "amount_micro": rng.choice((2, 5, 10, 25)) * 1_000_000,
                        "granted_at": granted,
                        "expires_at": self.start_ms + rng.randint(1, 30) * DAY_MS,
                        "priority": rng.choice((0, 0, 1)),
                        "occurred_at": granted,
                        "reason": None,
                    }
                )
        return out

    def _diurnal_time(self, acct: Account) -> int:
        # Reject-sample a time of day weighted towards local working hours and evenings.
        rng = self._rng
        while True:
            t = self.start_ms + rng.randrange(self.span_ms)
            local_hour = ((t // HOUR_MS) + acct.timezone_shift_h) % 24
            weight = 0.15 + 0.85 * max(0.0, math.sin(math.pi * (local_hour - 6) / 18)) if local_hour >= 6 else 0.1
            if rng.random() < weight:
                return t

    def events(self, n: int) -> Iterator[dict[str, Any]]:
        """n interaction events, in sessions of a few turns each."""
        rng = self._rng
        produced = 0
        while produced < n:
            acct = rng.choice(self._accounts)
            acct.sessions += 1
            session = f"{acct.account_id}-s{acct.sessions}"
            t = self._diurnal_time(acct)
            model = rng.choices(MODELS, (0.4, 0.45, 0.15))[0]
            for turn in range(min(rng.randint(1, 6), n - produced)):
                yield self._event(acct, session, turn, t, model)
                produced += 1
                t += rng.randint(5_000, 120_000)

    def _event(self, acct: Account, session: str, turn: int, t: int, model: str) -> dict[str, Any]:
        rng = self._rng
        lean = acct.leaning
        long_ctx = rng.random() < (0.45 if lean == "long" else 0.04)
        reasoning = rng.random() < (0.5 if lean == "reasoning" else 0.08)
        tools = rng.random() < (0.6 if lean == "tools" else 0.1)
        context = rng.randint(100_000, 400_000) if long_ctx else rng.randint(500, 60_000)
        steps = rng.randint(3, 12) if reasoning else rng.choice((0, 0, 1, 2))
        thinking = rng.randint(2_000, 30_000) if reasoning else 0
        n_tools = rng.randint(1, 5) if tools else 0
        roll = rng.random()
        outcome = (
            "SUCCESS" if roll < 0.93 else "ERROR" if roll < 0.97 else "TIMEOUT" if roll < 0.98
            else "REFUSED" if roll < 0.99 else "CLIENT_ABORT"
        )
        input_tokens = min(context, rng.randint(200, 8_000) + (context // 2 if long_ctx else 0))
        cached = rng.randint(0, input_tokens // 2) if turn > 0 else 0
        return {
            "event_id": _h(f"{session}-{turn}-{t}-{rng.random()}"),
            "occurred_at": t,
            "account_id": acct.account_id,
            "team_id": acct.team_id,
            "org_id": acct.org_id,
            "plan": acct.plan,
            "credit_grant_id": None,
            "model": model,
            "surface": rng.choice(SURFACES),
            "session_id": session,
            "turn_index": turn,
            "input_tokens": input_tokens,
            "output_tokens": rng.randint(20, 4_000),
            "cached_tokens": cached,
            "context_window_tokens": context,
            "reasoning_steps": steps,
            "thinking_tokens": thinking,
            "tool_calls": n_tools,
            "tool_names": rng.sample(TOOLS, min(n_tools, len(TOOLS))),
            "latency_ms": rng.randint(200, 30_000),
            "outcome": outcome,
            "error_code": None if outcome == "SUCCESS" else f"E_{outcome}",
            "ip_hash": acct.ip_hash,
            "device_hash": acct.device_hash,
            "payment_hash": acct.payment_hash,
            "prompt_fingerprint": _h(f"prompt-{rng.randrange(1_000_000)}"),
            "context_uniqueness": round(rng.uniform(0.5, 1.0), 3) if long_ctx else None,
            "attributes": {},
        }
