"""Classification and pricing against the published table, with exact decimal checks."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.policy_file import PolicyError, load_policy_file, parse_policy
from streams.credits.policy import (
    charge,
    classify,
    div_half_even,
    list_price_micro,
    load_policy,
    should_sample,
)

POLICY = load_policy()
DEFAULT_TEXT = (Path(__file__).resolve().parents[3] / "schemas/policy/credit_policy.toml").read_text()


@pytest.mark.parametrize(
    ("ctx", "steps", "thinking", "tools", "category", "flags"),
    [
        (99_999, 2, 0, 0, "STANDARD_CHAT", (False, False, False)),
        (100_000, 0, 0, 0, "EXTENDED_CONTEXT", (True, False, False)),
        (1_000, 3, 0, 0, "COMPLEX_REASONING", (False, True, False)),
        (1_000, 0, 16_000, 0, "COMPLEX_REASONING", (False, True, False)),
        (1_000, 0, 0, 1, "TOOL_USE", (False, False, True)),
        # Several qualify: the highest multiplier wins and every flag is kept.
        (150_000, 5, 0, 3, "EXTENDED_CONTEXT", (True, True, True)),
        (2_000, 4, 0, 2, "COMPLEX_REASONING", (False, True, True)),
    ],
)
def test_classification_follows_the_published_table(ctx: int, steps: int, thinking: int, tools: int,
                                                     category: str, flags: tuple[bool, bool, bool]) -> None:
    c = classify(POLICY, ctx, steps, thinking, tools)
    assert c.category == category
    assert (c.is_extended_context, c.is_complex_reasoning, c.is_tool_use) == flags


def test_multipliers_and_priorities_are_the_programmes() -> None:
    assert {k: str(v) for k, v in POLICY.multiplier.items()} == {
        "EXTENDED_CONTEXT": "3.5", "COMPLEX_REASONING": "2.0", "TOOL_USE": "1.5", "STANDARD_CHAT": "1.0"}
    assert POLICY.priority == {"EXTENDED_CONTEXT": "HIGH", "COMPLEX_REASONING": "VERY_HIGH",
                               "TOOL_USE": "MEDIUM", "STANDARD_CHAT": "LOW"}


@given(st.integers(0, 10**12), st.integers(1, 10**6))
def test_div_half_even_matches_decimal(n: int, d: int) -> None:
    want = (Decimal(n) / Decimal(d)).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    assert div_half_even(n, d) == int(want)


@given(st.integers(0, 2_000_000), st.integers(0, 100_000), st.integers(0, 500_000), st.integers(0, 100_000),
       st.sampled_from(["atlas-large", "atlas-medium", "atlas-small", "unknown-model"]),
       st.sampled_from(["EXTENDED_CONTEXT", "COMPLEX_REASONING", "TOOL_USE", "STANDARD_CHAT"]))
def test_prices_are_exact_and_list_is_charged_plus_subsidy(tin: int, tout: int, cached: int, think: int,
                                                          model: str, category: str) -> None:
    price = POLICY.price_for(model)
    assert price is not None
    lp = list_price_micro(price, tin, tout, cached, think)
    src = POLICY.source.prices.get(model) or POLICY.source.prices["*"]
    exact_list = (tin * src.input + tout * src.output + cached * src.cached + think * src.thinking) / 1000
    assert Decimal(lp) / 10**6 == exact_list.quantize(Decimal("0.000001"), rounding=ROUND_HALF_EVEN)
    pr = charge(POLICY, category, lp)
    exact_charged = (Decimal(lp) / 10**6 / POLICY.multiplier[category]).quantize(
        Decimal("0.000001"), rounding=ROUND_HALF_EVEN)
    assert Decimal(pr.charged_micro) / 10**6 == exact_charged
    assert pr.list_micro == pr.charged_micro + pr.subsidy_micro
    assert pr.subsidy_micro >= 0


def test_sampling_is_deterministic_and_keeps_failures() -> None:
    ids = [f"ev-{i}" for i in range(20_000)]
    first = [should_sample(POLICY, i, "LOW", "STANDARD_CHAT", "SUCCESS")[0] for i in ids]
    assert first == [should_sample(POLICY, i, "LOW", "STANDARD_CHAT", "SUCCESS")[0] for i in ids]
    assert 0.005 < sum(first) / len(ids) < 0.02  # 1% configured
    assert should_sample(POLICY, "x", "VERY_HIGH", "COMPLEX_REASONING", "TIMEOUT") == (True, "FAILURE_KEPT")
    assert should_sample(POLICY, "x", "MEDIUM", "TOOL_USE", "ERROR") == (True, "FAILURE_KEPT")


def test_invalid_policy_names_the_field(tmp_path: Path) -> None:
    bad = DEFAULT_TEXT.replace('multiplier = "3.5"', 'multiplier = 3.5')
    with pytest.raises(PolicyError, match=r"categories\.extended_context\.multiplier"):
        parse_policy(bad)
    below_one = DEFAULT_TEXT.replace('multiplier = "1.5"', 'multiplier = "0.5"')
    with pytest.raises(PolicyError, match=r"tool_use\.multiplier"):
        parse_policy(below_one)
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy_file(tmp_path / "missing.toml")
    override = tmp_path / "p.toml"
    override.write_text(DEFAULT_TEXT.replace('version = "2026.11-1"', 'version = "test-2"'))
    assert load_policy(override).version == "test-2"
