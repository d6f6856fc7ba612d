"""Classification and pricing: pure functions over a compiled credit policy.

Credits are integer micro-credits (1 credit = 1,000,000). Rounding happens in exactly two places,
both half-even on integers: the list price of a request, and list / multiplier. The subsidy is the
exact difference, so list = charged + subsidy holds for every record and every sum.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from schemas.contracts import FEATURE_CATEGORY_SYMBOLS, PRIORITY_SYMBOLS
from schemas.policy_file import MICRO, PolicyFile, load_policy_file

EXTENDED_CONTEXT, COMPLEX_REASONING, TOOL_USE, STANDARD_CHAT = FEATURE_CATEGORY_SYMBOLS
CATEGORIES = FEATURE_CATEGORY_SYMBOLS
PRIORITIES = PRIORITY_SYMBOLS
FALLBACK_MODEL = "*"
# Sampling compares a 64-bit hash with rate * 2**64: exact, and the same on every replay.
_HASH_SPACE = 1 << 64


def div_half_even(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half-to-even, on non-negative integers."""
    q, r = divmod(numerator, denominator)
    twice = 2 * r
    if twice > denominator or (twice == denominator and q & 1):
        q += 1
    return q


@dataclass(frozen=True, slots=True)
class Price:
    """Micro-credits per 1,000 tokens."""

    input: int
    output: int
    cached: int
    thinking: int


@dataclass(frozen=True, slots=True)
class Classification:
    category: str
    is_extended_context: bool
    is_complex_reasoning: bool
    is_tool_use: bool


@dataclass(frozen=True, slots=True)
class Pricing:
    list_micro: int
    charged_micro: int
    subsidy_micro: int


class CompiledPolicy:
    """A validated policy turned into plain integers for the hot path."""

    def __init__(self, source: PolicyFile) -> None:
        self.source = source
        self.version = source.version
        cats = source.categories
        self.min_context = cats.extended_context.min_context_window_tokens or 100_000
        self.min_steps = cats.complex_reasoning.min_reasoning_steps or 3
        # None disables the thinking-token path; only steps then qualify a reasoning chain.
        self.min_thinking = cats.complex_reasoning.min_thinking_tokens
        self.min_tools = cats.tool_use.min_tool_calls or 1
        rules = {
            EXTENDED_CONTEXT: cats.extended_context,
            COMPLEX_REASONING: cats.complex_reasoning,
            TOOL_USE: cats.tool_use,
            STANDARD_CHAT: cats.standard_chat,
        }
        self.multiplier: dict[str, Decimal] = {c: r.multiplier for c, r in rules.items()}
        # Multipliers have at most 3 decimal places, so x1000 makes them exact integers.
        self.multiplier_milli: dict[str, int] = {c: int(m * 1000) for c, m in self.multiplier.items()}
        self.multiplier_text: dict[str, str] = {c: _plain(m) for c, m in self.multiplier.items()}
        self.priority: dict[str, str] = {c: r.priority for c, r in rules.items()}
        # The order in which a multi-qualifying request looks for its winner: highest multiplier
        # first, ties broken by the published table's order.
        self.precedence: tuple[str, ...] = tuple(
            sorted(CATEGORIES, key=lambda c: (-self.multiplier[c], CATEGORIES.index(c)))
        )
        # Every combination of the three qualifying flags, decided once: classify() is then one
        # lookup per event, and its results are shared immutable objects.
        self.classifications: dict[tuple[bool, bool, bool], Classification] = {}
        for ext, reasoning, tools in itertools.product((False, True), repeat=3):
            qualifies: dict[str, bool] = {EXTENDED_CONTEXT: ext, COMPLEX_REASONING: reasoning, TOOL_USE: tools,
                                          STANDARD_CHAT: True}
            winner = next(c for c in self.precedence if qualifies[c])
            self.classifications[(ext, reasoning, tools)] = Classification(winner, ext, reasoning, tools)
        self.prices: dict[str, Price] = {
            model: Price(
                input=int(p.input * MICRO),
                output=int(p.output * MICRO),
                cached=int(p.cached * MICRO),
                thinking=int(p.thinking * MICRO),
            )
            for model, p in source.prices.items()
        }
        s = source.sampling
        self.sample_threshold: dict[str, int] = {
            "VERY_HIGH": int(s.VERY_HIGH * _HASH_SPACE),
            "HIGH": int(s.HIGH * _HASH_SPACE),
            "MEDIUM": int(s.MEDIUM * _HASH_SPACE),
            "LOW": int(s.LOW * _HASH_SPACE),
        }
        self.keep_failures_in = frozenset(s.keep_failures_in)
        self.keep_errors_in = frozenset(s.keep_errors_in)
        self.detectors: Mapping[str, Mapping[str, Any]] = source.detectors

    def price_for(self, model: str) -> Price | None:
        return self.prices.get(model) or self.prices.get(FALLBACK_MODEL)

    def is_priced(self, model: str) -> bool:
        """Whether the price table names ``model`` (otherwise it is priced at the '*' fallback)."""
        return model in self.prices and model != FALLBACK_MODEL


def _plain(d: Decimal) -> str:
    text = format(d.normalize(), "f")
    return text if "." in text else text + ".0"


def load_policy(path: Path | None = None) -> CompiledPolicy:
    return CompiledPolicy(load_policy_file(path))


def classify(
    policy: CompiledPolicy,
    context_window_tokens: int,
    reasoning_steps: int,
    thinking_tokens: int,
    tool_calls: int,
) -> Classification:
    ext = context_window_tokens >= policy.min_context
    reasoning = reasoning_steps >= policy.min_steps or (
        policy.min_thinking is not None and thinking_tokens >= policy.min_thinking
    )
    tools = tool_calls >= policy.min_tools
    return policy.classifications[(ext, reasoning, tools)]


def list_price_micro(price: Price, input_tokens: int, output_tokens: int, cached_tokens: int,
                     thinking_tokens: int) -> int:
    per_thousand = (
        input_tokens * price.input
        + output_tokens * price.output
        + cached_tokens * price.cached
        + thinking_tokens * price.thinking
    )
    return div_half_even(per_thousand, 1000)


def charge(policy: CompiledPolicy, category: str, list_micro: int) -> Pricing:
    """A multiplier is the value of a credit on a feature: the account pays list / multiplier."""
    charged = div_half_even(list_micro * 1000, policy.multiplier_milli[category])
    return Pricing(list_micro, charged, list_micro - charged)


def price_event(policy: CompiledPolicy, price: Price, ev: Mapping[str, Any]) -> tuple[Classification, Pricing]:
    """Classification and pricing of one decoded InteractionEvent (``price`` = ``price_for`` its model)."""
    cls = classify(policy, ev["context_window_tokens"], ev["reasoning_steps"], ev["thinking_tokens"],
                   ev["tool_calls"])
    lp = list_price_micro(price, ev["input_tokens"], ev["output_tokens"], ev.get("cached_tokens", 0),
                          ev["thinking_tokens"])
    return cls, charge(policy, cls.category, lp)


def should_sample(policy: CompiledPolicy, event_id: str, priority: str, category: str,
                  outcome: str) -> tuple[bool, str]:
    """Whether a request goes to the refinement feed, and why. Deterministic in the event id so
    that a replay after a crash makes the same choice."""
    failed = outcome != "SUCCESS"
    if failed and category in policy.keep_failures_in:
        return True, "FAILURE_KEPT"
    if failed and outcome == "ERROR" and category in policy.keep_errors_in:
        return True, "FAILURE_KEPT"
    threshold = policy.sample_threshold[priority]
    if threshold <= 0:
        return False, ""
    digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < threshold, "SAMPLED"
