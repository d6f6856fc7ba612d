"""Randomised labelled traffic: each of the twelve gaming patterns with its parameters drawn per seed
(rates, sizes, models including models the policy does not price, grant sizes, durations, jitter,
time zones), a legitimate look-alike (decoy) for each, and genuine background accounts.

Tune on ``TRAINING_SEEDS``, report on ``TEST_SEEDS`` (disjoint). The fixed scenarios in
``streams.synthetic.scenarios`` stay as the small, readable set the integration test uses; this is
the set that asks whether a rule holds over the whole range of its pattern.

Every generated account is labelled with its pattern (the gamer) or ``decoy:<pattern>``; scoring is
in ``streams.synthetic.evaluation.score_patterns``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from streams.synthetic.generator import DAY_MS, HOUR_MS, MODELS, Account, Generator, _h
from streams.synthetic.scenarios import DECOY, GAMER, GENUINE, SIZES, Label, ScenarioSet, _Builder

MINUTE_MS = 60_000
SECOND_MS = 1_000
# Models missing from the policy's price table: metered at its "*" fallback price.
UNPRICED_MODELS = ("nova-preview", "atlas-xl-beta", "orion-mini")
TRAINING_SEEDS = (1, 2, 3, 4, 5)
TEST_SEEDS = (101, 102, 103, 104, 105)


class _Pattern(_Builder):
    """The scenario builder with randomised draws."""

    days: int = 6

    def model(self) -> str:
        return self.rng.choice(UNPRICED_MODELS) if self.rng.random() < 0.35 else self.rng.choice(MODELS)

    def log_uniform(self, lo: float, hi: float) -> float:
        return math.exp(self.rng.uniform(math.log(lo), math.log(hi)))

    def person(self, scenario: str, plan: str, label: str, expected: tuple[str, ...] = (), **kw: Any) -> Account:
        acct = self.account(scenario, plan, label, expected, **kw)
        acct.timezone_shift_h = self.rng.randint(-11, 12)
        return acct

    def credits(self, lo: int, hi: int) -> int:
        return round(self.log_uniform(lo, hi))

    def end(self) -> int:
        return self.start_ms + self.days * DAY_MS

    def gaps(self, t: int, until: int, mean_ms: float, jitter: float, *, limit: int = 100_000) -> list[int]:
        """Times from ``t`` to ``until``: gaps of ``mean_ms`` each moved by up to +-``jitter``."""
        out: list[int] = []
        while t < until and len(out) < limit:
            out.append(t)
            t += max(SECOND_MS // 2, int(mean_ms * (1 + self.rng.uniform(-jitter, jitter))))
        return out

    def heavy(self) -> dict[str, Any]:
        """A request in a multiplied category, as someone farming multipliers sends it."""
        shape = self.chat()
        roll = self.rng.random()
        if roll < 0.35:
            shape.update(self.long_doc(100_000, 300_000))
        elif roll < 0.7:
            shape.update(reasoning_steps=self.rng.randint(3, 12), thinking_tokens=self.rng.randint(500, 20_000))
        else:
            n = self.rng.randint(1, 8)
            shape.update(tool_calls=n, tool_names=["http_get", "sql", "code_exec"][: min(n, 3)])
        return shape


# -- the twelve patterns ------------------------------------------------------------------------

def round_the_clock(b: _Pattern, n: int) -> None:
    """A script on a free grant, requests in every hour, day and night, for days."""
    for _ in range(n):
        a = b.person("round_the_clock", "FREE", GAMER, ("CF-001",))
        start = b.start_ms + b.rng.randrange(DAY_MS)
        b.grant(a, b.credits(10, 200), start - b.rng.randrange(1, 5 * DAY_MS), b.end() + 10 * DAY_MS)
        mean = b.log_uniform(2 * MINUTE_MS, 20 * MINUTE_MS)
        model = b.model()
        t = start
        heavy = b.rng.random() < 0.5
        while t < b.end():
            b.emit(a, t, model=model, **(b.heavy() if heavy else b.chat()))
            t += int(b.rng.expovariate(1 / mean)) + 5 * SECOND_MS


def cadence(b: _Pattern, n: int) -> None:
    """A metronome: one request every g (one second to ten minutes), in runs of tens to hundreds."""
    for _ in range(n):
        a = b.person("cadence", "FREE", GAMER, ("CF-002",))
        b.grant(a, b.credits(10, 200), b.start_ms - b.rng.randrange(1, 10) * DAY_MS, b.end() + 10 * DAY_MS)
        gap = b.log_uniform(SECOND_MS, 10 * MINUTE_MS)
        jitter = b.rng.uniform(0.0, 0.12)
        model = b.model()
        runs_per_day = b.rng.randint(1, 4)
        per_run = b.rng.randint(40, 200)
        for day in range(b.days):
            for _r in range(runs_per_day):
                t0 = b.start_ms + day * DAY_MS + b.rng.randrange(DAY_MS)
                for t in b.gaps(t0, t0 + DAY_MS, gap, jitter, limit=per_run):
                    b.emit(a, t, model=model, **b.chat())


def fast_depletion(b: _Pattern, n: int) -> None:
    """A brand-new account redeems its welcome grant and burns through it in hours."""
    for _ in range(n):
        a = b.person("fast_depletion", "FREE", GAMER, ("CF-003",))
        t = b.start_ms + b.rng.randrange((b.days - 2) * DAY_MS)
        gid_amount = b.credits(3, 60)
        b.grant(a, gid_amount, t, t + 30 * DAY_MS)
        t += b.rng.randint(MINUTE_MS, 50 * MINUTE_MS)
        gap = b.log_uniform(10 * SECOND_MS, 5 * MINUTE_MS)
        model = b.model()
        budget = gid_amount * 1_000_000
        for _ in range(b.rng.randint(80, 400)):
            ev = b.emit(a, t, model=model, **b.heavy())
            budget -= _rough_charge(ev)
            if budget <= 0 and b.rng.random() < 0.7:
                break  # most stop once the grant is gone
            t += int(gap * b.rng.uniform(0.5, 1.5))


def farming(b: _Pattern, n: int) -> None:
    """Rings of freshly signed-up accounts behind one device (or one card), each drawing its grant."""
    for ring in range(n):
        size = b.rng.randint(5, 12)
        shared = _h(f"farm-{b.seed}-{ring}")
        by_card = b.rng.random() < 0.3
        members = []
        t = b.start_ms + b.rng.randrange(DAY_MS)
        for _ in range(size):
            kw = {"payment": shared} if by_card else {"device": shared}
            a = b.person("farming", "FREE", GAMER, ("CF-004",), **kw)
            b.grant(a, b.credits(2, 20), t, t + 30 * DAY_MS)
            members.append((a, t + b.rng.randint(MINUTE_MS, 30 * MINUTE_MS)))
            t += b.rng.randint(5 * MINUTE_MS, 6 * HOUR_MS)
        model = b.model()
        for a, first in members:
            for t in b.human_times(a, first, (b.end() - first) / DAY_MS, b.rng.uniform(2, 6)):
                if t >= first:
                    b.emit(a, t, model=model, **b.heavy())


def trial_cycling(b: _Pattern, n: int) -> None:
    """One device (or card), one new account after another, each redeeming a welcome grant."""
    for ring in range(n):
        shared = _h(f"cycle-{b.seed}-{ring}")
        by_card = b.rng.random() < 0.3
        t = b.start_ms + b.rng.randrange(DAY_MS)
        model = b.model()
        for _ in range(b.rng.randint(3, 5)):
            kw = {"payment": shared} if by_card else {"device": shared}
            a = b.person("trial_cycling", "FREE", GAMER, ("CF-005",), **kw)
            amount = b.credits(2, 30)
            b.grant(a, amount, t - b.rng.randint(MINUTE_MS, 30 * MINUTE_MS), t + 30 * DAY_MS)
            budget = amount * 1_000_000
            exhaust = b.rng.random() < 0.5
            for _ in range(b.rng.randint(15, 80)):
                ev = b.emit(a, t, model=model, **b.heavy())
                budget -= _rough_charge(ev)
                t += b.rng.randint(MINUTE_MS, 40 * MINUTE_MS)
                if exhaust and budget <= 0:
                    break
            t += b.rng.randint(HOUR_MS, 20 * HOUR_MS)


def context_padding(b: _Pattern, n: int) -> None:
    """Filler added to cross the extended-context threshold, small outputs or repeated context."""
    for _ in range(n):
        a = b.person("context_padding", "FREE", GAMER, ("CF-006",))
        b.grant(a, b.credits(10, 200), b.start_ms - DAY_MS, b.end() + 10 * DAY_MS)
        near = b.rng.uniform(0.01, 0.09)
        tiny = b.rng.random() < 0.6
        model = b.model()
        for t in b.human_times(a, b.start_ms, b.days, b.rng.uniform(4, 15)):
            ctx = b.rng.randint(100_000, int(100_000 * (1 + near)))
            b.emit(a, t, model=model, context_window_tokens=ctx, input_tokens=ctx - b.rng.randint(0, 3_000),
                   output_tokens=b.rng.randint(10, 200) if tiny else b.rng.randint(200, 900),
                   context_uniqueness=round(b.rng.uniform(0.02, 0.3), 3),
                   reasoning_steps=0, thinking_tokens=0, tool_calls=0, tool_names=[], outcome="SUCCESS",
                   error_code=None)


def category_skew(b: _Pattern, n: int) -> None:
    """Nearly every request steered into a multiplied category, at the bare minimum or maxed out,
    with little output."""
    for _ in range(n):
        a = b.person("category_skew", "FREE", GAMER, ("CF-007",))
        b.grant(a, b.credits(10, 200), b.start_ms - DAY_MS, b.end() + 10 * DAY_MS)
        maxed = b.rng.random() < 0.5
        share = b.rng.uniform(0.8, 1.0)
        model = b.model()
        for t in b.human_times(a, b.start_ms, b.days, b.rng.uniform(5, 20)):
            shape = b.chat()
            shape["output_tokens"] = b.rng.randint(5, 250)
            if b.rng.random() < share:
                kind = b.rng.choice(("tools", "reasoning", "both"))
                if kind in ("tools", "both"):
                    k = b.rng.randint(8, 30) if maxed else 1
                    shape.update(tool_calls=k, tool_names=["http_get"])
                if kind in ("reasoning", "both"):
                    shape.update(reasoning_steps=b.rng.randint(15, 60) if maxed else 3,
                                 thinking_tokens=b.rng.randint(100, 800))
            b.emit(a, t, model=model, **shape)


def replayed_prompts(b: _Pattern, n: int) -> None:
    """The same prompt sent over and over in multiplied categories."""
    for i in range(n):
        a = b.person("replayed_prompts", "FREE", GAMER, ("CF-008",))
        b.grant(a, b.credits(10, 200), b.start_ms - DAY_MS, b.end() + 10 * DAY_MS)
        fp = _h(f"replay-{b.seed}-{i}")
        share = b.rng.uniform(0.55, 0.95)
        model = b.model()
        for t in b.human_times(a, b.start_ms, b.days, b.rng.uniform(5, 25)):
            b.emit(a, t, model=model, prompt_fingerprint=fp if b.rng.random() < share else _h(f"p-{a}-{t}"),
                   **b.heavy())


def burn_before_expiry(b: _Pattern, n: int) -> None:
    """Light use for days, then the grant's last days burned at many times the usual rate."""
    for _ in range(n):
        a = b.person("burn_before_expiry", "FREE", GAMER, ("CF-009",))
        exp = b.end() - b.rng.randrange(6 * HOUR_MS)
        b.grant(a, b.credits(20, 300), b.start_ms - b.rng.randint(5, 20) * DAY_MS, exp)
        model = b.model()
        final = b.rng.uniform(0.5, 2.0) * DAY_MS
        for t in b.human_times(a, b.start_ms, (exp - final - b.start_ms) / DAY_MS, b.rng.uniform(2, 6)):
            b.emit(a, t, model=model, **b.chat())
        rate = b.log_uniform(60, 600)  # requests a day in the final stretch
        for t in b.gaps(int(exp - final), exp - MINUTE_MS, DAY_MS / rate, 0.9):
            b.emit(a, t, model=model, **b.heavy())


def probing(b: _Pattern, n: int) -> None:
    """Bursts of refused or invalid requests: testing filters, limits or the metering."""
    for _ in range(n):
        a = b.person("probing", "FREE", GAMER, ("CF-010",))
        b.grant(a, b.credits(5, 100), b.start_ms - DAY_MS, b.end() + 10 * DAY_MS)
        model = b.model()
        for t in b.human_times(a, b.start_ms, 1.0, 2):
            b.emit(a, t, model=model, **b.chat())
        # What the probing found is then used: heavy requests between and after the bursts.
        for t in b.human_times(a, b.start_ms + int(1.5 * DAY_MS), b.days - 1.5, b.rng.uniform(3, 10)):
            b.emit(a, t, model=model, **b.heavy())
        bad_share = b.rng.uniform(0.6, 0.95)
        for _burst in range(b.rng.randint(2, 5)):
            t0 = b.start_ms + DAY_MS + b.rng.randrange((b.days - 2) * DAY_MS)
            gap = b.log_uniform(2 * SECOND_MS, 40 * SECOND_MS)
            for t in b.gaps(t0, t0 + DAY_MS, gap, 0.5, limit=b.rng.randint(20, 100)):
                shape = b.chat()
                if b.rng.random() < bad_share:
                    code = b.rng.choice(("E_REFUSED", "E_INVALID_REQUEST", "E_POLICY_VIOLATION",
                                         "E_CONTEXT_LENGTH"))
                    shape.update(outcome="REFUSED" if code == "E_REFUSED" else "ERROR", output_tokens=0,
                                 error_code=code)
                b.emit(a, t, model=model, **shape)


def spike(b: _Pattern, n: int) -> None:
    """A quiet account that suddenly sends hundreds of requests in an hour or two."""
    for _ in range(n):
        a = b.person("spike", "FREE", GAMER, ("CF-011",))
        b.grant(a, b.credits(20, 300), b.start_ms - 10 * DAY_MS, b.end() + 10 * DAY_MS)
        model = b.model()
        quiet_days = b.rng.uniform(2, b.days - 2)
        for t in b.human_times(a, b.start_ms, quiet_days, b.rng.uniform(2, 8)):
            b.emit(a, t, model=model, **b.chat())
        t0 = b.start_ms + int(quiet_days * DAY_MS) + b.rng.randrange(12 * HOUR_MS)
        size = b.rng.randint(60, 600)
        span = b.rng.uniform(0.3, 2.0) * HOUR_MS
        heavy = b.rng.random() < 0.6
        for t in b.gaps(t0, t0 + int(span), span / size, 0.8, limit=size):
            b.emit(a, t, model=model, **(b.heavy() if heavy else b.chat()))


def account_sharing(b: _Pattern, n: int) -> None:
    """One free account used from many devices on many networks."""
    for _ in range(n):
        a = b.person("account_sharing", "FREE", GAMER, ("CF-012",))
        b.grant(a, b.credits(10, 200), b.start_ms - DAY_MS, b.end() + 10 * DAY_MS)
        k = b.rng.randint(4, 12)
        devices = [_h(f"share-dev-{a.account_id}-{i}") for i in range(k)]
        ips = [_h(f"share-ip-{a.account_id}-{i}") for i in range(max(3, k - b.rng.randint(0, 2)))]
        model = b.model()
        for t in b.human_times(a, b.start_ms, b.days, b.rng.uniform(8, 30)):
            i = b.rng.randrange(k)
            b.emit(a, t, model=model, device_hash=devices[i], ip_hash=ips[i % len(ips)], **b.chat())


# -- decoys: legitimate look-alikes -------------------------------------------------------------

def ci_round_the_clock(b: _Pattern, n: int) -> None:
    """A paid plan's API key running CI jobs around the clock, on the subscription."""
    for _ in range(n):
        a = b.person("decoy:round_the_clock", b.rng.choice(("PRO", "MAX", "TEAM")), DECOY)
        if b.rng.random() < 0.5:
            b.grant(a, b.credits(2, 10), b.start_ms - DAY_MS, b.end() + 10 * DAY_MS)
        mean = b.log_uniform(2 * MINUTE_MS, 20 * MINUTE_MS)
        t = b.start_ms + b.rng.randrange(DAY_MS)
        model = b.model()
        while t < b.end():
            b.emit(a, t, model=model, surface="API", **b.chat())
            t += int(b.rng.expovariate(1 / mean)) + 5 * SECOND_MS


def ci_cron(b: _Pattern, n: int) -> None:
    """A paid plan's scheduled job: one request on a fixed cadence, all day, on the subscription."""
    for _ in range(n):
        a = b.person("decoy:cadence", b.rng.choice(("PRO", "MAX", "TEAM", "ENTERPRISE")), DECOY)
        if b.rng.random() < 0.5:
            b.grant(a, b.credits(2, 10), b.start_ms - DAY_MS, b.end() + 10 * DAY_MS)
        gap = b.log_uniform(SECOND_MS, 10 * MINUTE_MS)
        model = b.model()
        for day in range(b.days):
            t0 = b.start_ms + day * DAY_MS + b.rng.randrange(DAY_MS)
            for t in b.gaps(t0, t0 + DAY_MS, gap, 0.05, limit=b.rng.randint(40, 200)):
                b.emit(a, t, model=model, surface="API", **b.chat())


def power_users(b: _Pattern, n: int, pattern: str) -> None:
    """New users excited by a fresh grant: every feature, many hours a day; the paying ones keep
    going on the subscription."""
    for _ in range(n):
        a = b.person(f"decoy:{pattern}", b.rng.choice(("FREE", "PRO", "MAX")), DECOY,
                     leaning=b.rng.choice(("long", "reasoning", "tools")))
        start = b.start_ms + b.rng.randrange(DAY_MS)
        b.grant(a, b.credits(5, 50), start - b.rng.randint(MINUTE_MS, 30 * MINUTE_MS), start + 30 * DAY_MS)
        model = b.model()
        for t in b.human_times(a, start, (b.end() - start) / DAY_MS, b.rng.uniform(10, 40)):
            b.emit(a, t, model=model, outcome="SUCCESS", error_code=None)


def family_laptop(b: _Pattern, n: int, pattern: str) -> None:
    """Two to four people of one household sharing a laptop, each with their own account."""
    for g in range(n):
        device = _h(f"family-dev-{b.seed}-{pattern}-{g}")
        ip = _h(f"family-ip-{b.seed}-{pattern}-{g}")
        for _ in range(b.rng.randint(2, 4)):
            a = b.person(f"decoy:{pattern}", b.rng.choice(("FREE", "FREE", "PRO")), DECOY, device=device, ip=ip)
            b.grant(a, b.credits(2, 25), b.start_ms - b.rng.randint(2, 20) * DAY_MS, b.end() + 10 * DAY_MS)
            for t in b.human_times(a, b.start_ms, b.days, b.rng.uniform(1, 6)):
                b.emit(a, t, model=b.model())


def office_network(b: _Pattern, n: int, pattern: str) -> None:
    """A team behind one office network and one company card."""
    for g in range(n):
        ip = _h(f"office-ip-{b.seed}-{pattern}-{g}")
        card = _h(f"office-card-{b.seed}-{pattern}-{g}")
        for _ in range(b.rng.randint(4, 8)):
            a = b.person(f"decoy:{pattern}", "TEAM", DECOY, ip=ip, payment=card, team=f"t{b.seed}{g}",
                         leaning=b.rng.choice(("chat", "tools", "reasoning")))
            b.grant(a, b.credits(5, 30), b.start_ms - DAY_MS, b.end() + 10 * DAY_MS)
            for t in b.human_times(a, b.start_ms, b.days, b.rng.uniform(2, 8)):
                b.emit(a, t, model=b.model())


def long_documents(b: _Pattern, n: int) -> None:
    """Real long-document work: contexts well over the threshold, substantial answers."""
    for _ in range(n):
        a = b.person("decoy:context_padding", b.rng.choice(("FREE", "PRO")), DECOY, leaning="long")
        b.grant(a, b.credits(10, 100), b.start_ms - DAY_MS, b.end() + 10 * DAY_MS)
        for t in b.human_times(a, b.start_ms, b.days, b.rng.uniform(3, 10)):
            b.emit(a, t, model=b.model(), **b.long_doc())


def agent_tools(b: _Pattern, n: int) -> None:
    """Enterprise agent loops: tool calls every few seconds, real outputs."""
    for _ in range(n):
        a = b.person("decoy:category_skew", "ENTERPRISE", DECOY, leaning="tools", team="ent")
        b.grant(a, b.credits(20, 100), b.start_ms - DAY_MS, b.end() + 10 * DAY_MS)
        for t0 in b.human_times(a, b.start_ms, b.days, b.rng.uniform(1, 3)):
            for t in b.gaps(t0, t0 + HOUR_MS, b.rng.uniform(3, 10) * SECOND_MS, 0.4, limit=b.rng.randint(8, 30)):
                shape = b.chat()
                k = b.rng.randint(1, 8)
                shape.update(tool_calls=k, tool_names=["sql", "http_get"][: min(k, 2)],
                             output_tokens=b.rng.randint(100, 2_000))
                b.emit(a, t, model=b.model(), **shape)


def test_suite_prompts(b: _Pattern, n: int) -> None:
    """A paid plan's regression suite: the same prompts every run, on the subscription."""
    for i in range(n):
        a = b.person("decoy:replayed_prompts", b.rng.choice(("PRO", "MAX", "TEAM")), DECOY)
        fps = [_h(f"suite-{b.seed}-{i}-{k}") for k in range(b.rng.randint(1, 3))]
        model = b.model()
        for t in b.human_times(a, b.start_ms, b.days, b.rng.uniform(5, 20)):
            b.emit(a, t, model=model, prompt_fingerprint=b.rng.choice(fps), surface="API", **b.heavy())


def month_end_batch(b: _Pattern, n: int, pattern: str) -> None:
    """A team's month-end batch job: a burst of reports on the subscription, near a grant's expiry."""
    for _ in range(n):
        a = b.person(f"decoy:{pattern}", b.rng.choice(("TEAM", "ENTERPRISE", "MAX")), DECOY, team="fin")
        exp = b.end() - b.rng.randrange(6 * HOUR_MS)
        b.grant(a, b.credits(2, 10), b.start_ms - 20 * DAY_MS, exp)
        for t in b.human_times(a, b.start_ms, b.days - 2, b.rng.uniform(3, 8)):
            b.emit(a, t, model=b.model(), **b.chat())
        t0 = exp - b.rng.randint(6, 30) * HOUR_MS
        size = b.rng.randint(60, 400)
        for t in b.gaps(t0, exp, b.rng.uniform(5, 60) * SECOND_MS, 0.5, limit=size):
            b.emit(a, t, model=b.model(), surface="API", **b.heavy())


def broken_integration(b: _Pattern, n: int) -> None:
    """A paid integration stuck on one error: the same code over and over."""
    for _ in range(n):
        a = b.person("decoy:probing", b.rng.choice(("PRO", "TEAM", "FREE")), DECOY)
        code = b.rng.choice(("E_INVALID_REQUEST", "E_CONTEXT_LENGTH", "E_BAD_TOOL"))
        for t in b.human_times(a, b.start_ms, b.days, 3):
            b.emit(a, t, model=b.model(), **b.chat())
        t0 = b.start_ms + b.rng.randrange((b.days - 1) * DAY_MS)
        for t in b.gaps(t0, t0 + DAY_MS, b.rng.uniform(2, 30) * SECOND_MS, 0.3, limit=b.rng.randint(20, 80)):
            shape = b.chat()
            shape.update(outcome="ERROR", output_tokens=0, error_code=code)
            b.emit(a, t, model=b.model(), **shape)


def multi_device_subscriber(b: _Pattern, n: int) -> None:
    """A paying subscriber on laptop, phone, tablet and a work machine, at home and at the office."""
    for _ in range(n):
        a = b.person("decoy:account_sharing", b.rng.choice(("PRO", "MAX")), DECOY)
        devices = [_h(f"sub-dev-{a.account_id}-{i}") for i in range(b.rng.randint(3, 5))]
        ips = [_h(f"sub-ip-{a.account_id}-{i}") for i in range(2)]
        for t in b.human_times(a, b.start_ms, b.days, b.rng.uniform(5, 20)):
            b.emit(a, t, model=b.model(), device_hash=b.rng.choice(devices), ip_hash=b.rng.choice(ips), **b.chat())


Maker = Callable[[_Pattern, int], None]
# pattern -> (the rule it exists to exercise, gamer maker, decoy maker)
PATTERNS: dict[str, tuple[str, Maker, Maker]] = {
    "round_the_clock": ("CF-001", round_the_clock, ci_round_the_clock),
    "cadence": ("CF-002", cadence, ci_cron),
    "fast_depletion": ("CF-003", fast_depletion, lambda b, n: power_users(b, n, "fast_depletion")),
    "farming": ("CF-004", farming, lambda b, n: family_laptop(b, n, "farming")),
    "trial_cycling": ("CF-005", trial_cycling, lambda b, n: office_network(b, n, "trial_cycling")),
    "context_padding": ("CF-006", context_padding, long_documents),
    "category_skew": ("CF-007", category_skew, agent_tools),
    "replayed_prompts": ("CF-008", replayed_prompts, test_suite_prompts),
    "burn_before_expiry": ("CF-009", burn_before_expiry, lambda b, n: month_end_batch(b, n, "burn_before_expiry")),
    "probing": ("CF-010", probing, broken_integration),
    "spike": ("CF-011", spike, lambda b, n: month_end_batch(b, n, "spike")),
    "account_sharing": ("CF-012", account_sharing, multi_device_subscriber),
}


def _rough_charge(ev: dict[str, Any]) -> int:
    """About what a request debits on a mid-priced model: the generator's sense of "the grant is gone"
    (the meter decides the real amounts)."""
    tokens = ev["input_tokens"] + 5 * (ev["output_tokens"] + ev["thinking_tokens"])
    return tokens * 3 // 1000 * 1000 // 2


def build_randomised(seed: int, *, start_ms: int = 1_793_000_000_000, gamers: tuple[int, int] = (2, 4),
                     decoys: tuple[int, int] = (2, 3), background_accounts: int = 300) -> ScenarioSet:
    """Background accounts, then every pattern and its decoy with parameters drawn from ``seed``."""
    rng = random.Random(seed * 104_729 + 7)
    days = rng.randint(5, 7)
    background = Generator(accounts=background_accounts, seed=seed + 50_000, start_ms=start_ms,
                           span_ms=days * DAY_MS, account_prefix=f"bg-{seed}")
    events = list(background.events(background_accounts * rng.randint(3, 6) * days))
    for ev in events:  # some background traffic on models the policy does not price
        if _h(ev["account_id"])[0] in "01":
            ev["model"] = UNPRICED_MODELS[int(_h(ev["account_id"])[1], 16) % len(UNPRICED_MODELS)]
    grants = background.grants()
    labels = {a.account_id: Label("genuine", False, frozenset(), GENUINE) for a in background.account_list}
    b = _Pattern(seed=seed, size=SIZES["small"], start_ms=start_ms)
    b.days = days
    for name, (_rule, gamer, decoy) in PATTERNS.items():
        # A ring is several accounts: one or two rings per set.
        gamer(b, rng.randint(1, 2) if name in ("farming", "trial_cycling") else rng.randint(*gamers))
        decoy(b, rng.randint(*decoys))
    events += b.events
    grants += b.grants
    labels.update(b.labels)
    events.sort(key=lambda e: (e["occurred_at"], e["event_id"]))
    end = max(e["occurred_at"] for e in events) + 1
    return ScenarioSet(events, grants, labels, start_ms, end, seed, f"randomised-{seed}")
