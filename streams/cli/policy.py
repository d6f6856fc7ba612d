"""``creditflow policy show|explain``: what the active credit policy says, and how it prices one event."""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from schemas.policy_file import MICRO, PolicyError
from streams.credits.ledger import debit
from streams.credits.policy import (
    CATEGORIES,
    CompiledPolicy,
    charge,
    classify,
    list_price_micro,
    load_policy,
    should_sample,
)
from streams.settings import get_settings


def _credits(micro: int) -> str:
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    return f"{sign}{whole}.{frac:06d}"


def _load(path: Path | None) -> CompiledPolicy:
    try:
        return load_policy(path or get_settings().policy_path)
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from None


@click.group("policy")
def policy() -> None:
    """Inspect the credit policy (versioned data: thresholds, multipliers, prices, sampling)."""


@policy.command("show")
@click.option("--path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="policy file (default: CREDITFLOW_POLICY_PATH or the shipped policy)")
def show(path: Path | None) -> None:
    """Print the active policy as tables."""
    p = _load(path)
    console = Console()
    console.print(f"[bold]credit policy[/bold] version [cyan]{p.version}[/cyan]  {p.source.description}")
    t = Table(title="feature categories (highest multiplier wins)")
    for col in ("category", "qualifies when", "multiplier", "priority", "sampling rate"):
        t.add_column(col)
    rule = {
        "EXTENDED_CONTEXT": f"context window >= {p.min_context:,} tokens",
        "COMPLEX_REASONING": f">= {p.min_steps} reasoning steps"
        + (f" or >= {p.min_thinking:,} thinking tokens" if p.min_thinking else ""),
        "TOOL_USE": f">= {p.min_tools} tool call(s)",
        "STANDARD_CHAT": "otherwise",
    }
    for c in p.precedence:
        prio = p.priority[c]
        t.add_row(c, rule[c], f"{p.multiplier_text[c]}x", prio, str(getattr(p.source.sampling, prio)))
    console.print(t)
    prices = Table(title="list prices (credits per 1,000 tokens)")
    for col in ("model", "input", "output", "cached", "thinking"):
        prices.add_column(col, justify="right" if col != "model" else "left")
    for model, mp in p.source.prices.items():
        prices.add_row(model, str(mp.input), str(mp.output), str(mp.cached), str(mp.thinking))
    console.print(prices)
    s = p.source.sampling
    console.print(f"always kept for refinement: failures in {', '.join(s.keep_failures_in) or '-'}; "
                  f"errors in {', '.join(s.keep_errors_in) or '-'}")
    if p.detectors:
        console.print(f"detectors configured: {', '.join(sorted(p.detectors))}")


@policy.command("explain")
@click.argument("event", required=False)
@click.option("--file", "file_", type=click.File("r"), default=None, help="read the event JSON from a file")
@click.option("--path", type=click.Path(path_type=Path, dir_okay=False), default=None, help="policy file")
def explain(event: str | None, file_: click.utils.LazyFile | None, path: Path | None) -> None:
    """Show step by step how one event (JSON, argument or --file or stdin) is classified and priced.

    Grants may be given as "grants": [{"grant_id", "campaign", "amount", "expires_at", ...}] to see
    the burn-down too."""
    text = event if event is not None else (file_.read() if file_ else sys.stdin.read())
    try:
        ev = json.loads(text)
        if not isinstance(ev, dict):
            raise ValueError("the event must be a JSON object")
    except ValueError as exc:
        raise click.ClickException(f"event is not valid JSON: {exc}") from None
    p = _load(path)
    console = Console()
    try:
        ctx = int(ev.get("context_window_tokens", 0))
        steps = int(ev.get("reasoning_steps", 0))
        thinking = int(ev.get("thinking_tokens", 0))
        tools = int(ev.get("tool_calls", 0))
        tin = int(ev.get("input_tokens", 0))
        tout = int(ev.get("output_tokens", 0))
        tcached = int(ev.get("cached_tokens", 0))
    except (TypeError, ValueError) as exc:
        raise click.ClickException(f"token counts must be integers: {exc}") from None
    model = str(ev.get("model", "*"))
    cls = classify(p, ctx, steps, thinking, tools)
    steps_t = Table(title=f"how policy {p.version} prices this request", show_lines=False)
    steps_t.add_column("step")
    steps_t.add_column("detail")
    yes = {True: "yes", False: "no"}
    steps_t.add_row("1. extended context", f"{ctx:,} >= {p.min_context:,}? {yes[cls.is_extended_context]}")
    steps_t.add_row("2. complex reasoning",
                    f"{steps} >= {p.min_steps} steps or {thinking:,} >= {p.min_thinking or '-'} thinking tokens? "
                    f"{'yes' if cls.is_complex_reasoning else 'no'}")
    steps_t.add_row("3. tool use", f"{tools} >= {p.min_tools}? {'yes' if cls.is_tool_use else 'no'}")
    steps_t.add_row("4. category", f"{cls.category} (highest multiplier among qualifying: "
                    f"{', '.join(c for c in CATEGORIES if c == 'STANDARD_CHAT' or getattr(cls, 'is_' + c.lower()))})")
    price = p.price_for(model)
    if price is None:
        raise click.ClickException(f"no list price for model {model!r} and no '*' fallback in the policy")
    lp = list_price_micro(price, tin, tout, tcached, thinking)
    if not p.is_priced(model):
        # Said out loud: a model missing from the price table is metered at the fallback price.
        steps_t.add_row("5. price table", f"[yellow]{model!r} is not in policy {p.version}'s price table: "
                        f"priced at the '*' fallback[/yellow]")
    steps_t.add_row("5. list price", f"{model}: {tin:,} in x {_credits(price.input)} + {tout:,} out x "
                    f"{_credits(price.output)} + {tcached:,} cached x {_credits(price.cached)} + {thinking:,} "
                    f"thinking x {_credits(price.thinking)} per 1K = {_credits(lp)} credits")
    pr = charge(p, cls.category, lp)
    charged, subsidy = _credits(pr.charged_micro), _credits(pr.subsidy_micro)
    steps_t.add_row("6. charged", f"{_credits(lp)} / {p.multiplier_text[cls.category]} = {charged} credits")
    steps_t.add_row("7. subsidy", f"{_credits(lp)} - {charged} = {subsidy} credits")
    prio = p.priority[cls.category]
    sampled, why = should_sample(p, str(ev.get("event_id", "")), prio, cls.category, str(ev.get("outcome", "SUCCESS")))
    steps_t.add_row("8. priority", f"{prio}; refinement feed: {'yes (' + why + ')' if sampled else 'no'}")
    grants = ev.get("grants")
    if isinstance(grants, list) and grants:
        try:
            state = {
                str(g["grant_id"]): {
                    "amount": int(g["amount_micro"]) if "amount_micro" in g
                    else int(Decimal(str(g["amount"])) * MICRO),
                    "campaign": str(g.get("campaign", "")), "granted_at": int(g.get("granted_at", 0)),
                    "expires_at": int(g.get("expires_at", 2**62)), "priority": int(g.get("priority", 0)),
                    "revoked_at": g.get("revoked_at"),
                }
                for g in grants
            }
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise click.ClickException(f"bad grant in event: {exc}") from None
        debits, uncovered = debit(state, {}, pr.charged_micro, int(ev.get("occurred_at", 0)))
        for d in debits:
            steps_t.add_row("9. debit", f"grant {d.grant_id} ({d.campaign}): {_credits(d.amount_micro)}, "
                            f"balance after {_credits(d.balance_after_micro)}")
        steps_t.add_row("10. subscription", f"{_credits(uncovered)} credits not covered by grants")
    console.print(steps_t)
