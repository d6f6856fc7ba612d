"""Loading and validating the credit policy file (TOML), the shipped default or one given by path."""

from __future__ import annotations

import tomllib
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.contracts import FeatureCategory, Priority

PriorityName = Priority
CategoryName = FeatureCategory

MICRO = 1_000_000


class PolicyError(ValueError):
    """The policy file is unreadable or invalid; the message names the bad field."""


def _exact(value: Any, places: int, field: str) -> Decimal:
    # Policy numbers are strings so that TOML's binary floats never touch a credit amount.
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a decimal string like \"1.5\", got {value!r}")
    try:
        d = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{field} is not a decimal: {value!r}") from None
    if not d.is_finite() or d < 0:
        raise ValueError(f"{field} must be a finite, non-negative decimal: {value!r}")
    exponent = d.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > places:
        raise ValueError(f"{field} has more than {places} decimal places: {value!r}")
    return d


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CategoryRule(_Strict):
    multiplier: Decimal
    priority: PriorityName
    min_context_window_tokens: int | None = Field(default=None, ge=1)
    min_reasoning_steps: int | None = Field(default=None, ge=1)
    min_thinking_tokens: int | None = Field(default=None, ge=1)
    min_tool_calls: int | None = Field(default=None, ge=1)

    @field_validator("multiplier", mode="before")
    @classmethod
    def _multiplier(cls, v: Any) -> Decimal:
        d = _exact(v, 3, "multiplier")
        if d < 1:
            raise ValueError(f"multiplier must be >= 1 (a credit is never worth less than list): {v!r}")
        return d


class Categories(_Strict):
    extended_context: CategoryRule
    complex_reasoning: CategoryRule
    tool_use: CategoryRule
    standard_chat: CategoryRule


class ModelPrice(_Strict):
    """Credits per 1,000 tokens."""

    input: Decimal
    output: Decimal
    cached: Decimal
    thinking: Decimal

    @field_validator("input", "output", "cached", "thinking", mode="before")
    @classmethod
    def _price(cls, v: Any) -> Decimal:
        return _exact(v, 6, "price")


class Sampling(_Strict):
    VERY_HIGH: Decimal
    HIGH: Decimal
    MEDIUM: Decimal
    LOW: Decimal
    keep_failures_in: list[CategoryName] = Field(default_factory=list)
    keep_errors_in: list[CategoryName] = Field(default_factory=list)

    @field_validator("VERY_HIGH", "HIGH", "MEDIUM", "LOW", mode="before")
    @classmethod
    def _rate(cls, v: Any) -> Decimal:
        d = _exact(v, 6, "sampling rate")
        if d > 1:
            raise ValueError(f"sampling rate must be within 0..1: {v!r}")
        return d


class Balances(_Strict):
    """When the processor tells a platform service about an account's credits (credit-notifications)."""

    # Shares of a grant used that are announced once each. 100% is GRANT_EXHAUSTED, its own kind and
    # always announced: listing it (as in "50/80/100%") is accepted and means just that.
    usage_thresholds_pct: list[int] = Field(default_factory=lambda: [50, 80])
    # Credits (decimal string): the account's remaining grant credits falling below this is announced.
    low_balance_floor: Decimal = Decimal("1")
    # A grant with credits left that expires within this many days (of the account's latest event
    # time) is announced once.
    expiry_warning_days: int = Field(default=7, ge=0)

    @field_validator("usage_thresholds_pct")
    @classmethod
    def _thresholds(cls, v: list[int]) -> list[int]:
        if any(not 0 < t <= 100 for t in v):
            raise ValueError(f"usage thresholds are percentages within 1..100 (100% is GRANT_EXHAUSTED): {v!r}")
        return sorted(set(v) - {100})

    @field_validator("low_balance_floor", mode="before")
    @classmethod
    def _floor(cls, v: Any) -> Decimal:
        return _exact(v, 6, "low_balance_floor")


class PolicyFile(_Strict):
    version: str = Field(min_length=1)
    description: str = ""
    categories: Categories
    prices: dict[str, ModelPrice]
    sampling: Sampling
    # Detector defaults live in the same file so that one version number covers every decision.
    detectors: dict[str, dict[str, Any]] = Field(default_factory=dict)
    balances: Balances = Field(default_factory=Balances)

    @field_validator("prices")
    @classmethod
    def _has_fallback(cls, v: dict[str, ModelPrice]) -> dict[str, ModelPrice]:
        if not v:
            raise ValueError("at least one model price is required")
        return v


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    return f"invalid policy field '{where}': {first['msg']}"


def parse_policy(text: str, source: str = "<policy>") -> PolicyFile:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from None
    try:
        return PolicyFile.model_validate(raw)
    except ValidationError as exc:
        raise PolicyError(f"{source}: {_describe(exc)}") from None


def load_policy_file(path: Path | None = None) -> PolicyFile:
    if path is None:
        text = resources.files("schemas").joinpath("policy/credit_policy.toml").read_text("utf-8")
        return parse_policy(text, "default policy")
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc.strerror}") from None
    return parse_policy(text, str(path))
