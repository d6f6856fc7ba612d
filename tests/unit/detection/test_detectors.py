"""Each detector fires on its pattern, stays quiet on genuine and decoy counterparts, and its
counter-signals lower the score. Patterns come from the labelled scenario builders (run in isolation
through the processor's meter and detection, ``streams.synthetic.in_process``) or from hand-made
observations where a counter-signal needs a controlled twin (the rules' arithmetic alone)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from streams.detection.rulebook import DETECTORS, DetectorEngine
from streams.detection.rules.base import DAY_MS, HOUR_MS, MINUTE_MS, Firing
from streams.detection.state import DETECTOR_TABLE_CODEC
from streams.synthetic.generator import Generator
from streams.synthetic.in_process import run_in_process
from streams.synthetic.scenarios import DECOYS, GAMER_SCENARIOS, SCENARIO_RULE, SIZES, ScenarioSet, _Builder

START = 1_793_000_000_000


def _isolated(fn: Callable[[_Builder], None], seed: int = 3) -> _Builder:
    b = _Builder(seed=seed, size=SIZES["small"], start_ms=START)
    fn(b)
    return b


def _firings(events: list[dict[str, Any]], grants: list[dict[str, Any]], policy_path: Any = None) -> list[Firing]:
    """Raw firings of the traffic metered and watched as the processor does it."""
    ordered = sorted(events, key=lambda e: (e["occurred_at"], e["event_id"]))
    traffic = ScenarioSet(ordered, grants, {}, START, ordered[-1]["occurred_at"] + 1, 0, "test")
    return run_in_process(traffic, policy_path=policy_path).firings


def _flagged(firings: list[Firing], rule: str) -> set[str]:
    out: set[str] = set()
    for f in firings:
        if f.rule_id != rule:
            continue
        if f.entity_type == "account":
            out.add(f.entity_id)
        out.update(r.split(":", 1)[1] for r in f.related_entities if r.startswith("account:"))
    return out


@pytest.fixture(scope="module")
def genuine_firings() -> list[Firing]:
    g = Generator(accounts=150, seed=5, start_ms=START, span_ms=5 * DAY_MS)
    return _firings(list(g.events(6000)), g.grants())


@pytest.fixture(scope="module")
def heavy_genuine_firings() -> list[Firing]:
    # Few accounts, ~300 requests a day each: the generator's humans at power-user volume.
    g = Generator(accounts=40, seed=3, start_ms=START, span_ms=3 * DAY_MS)
    return _firings(list(g.events(36_000)), g.grants())


@pytest.fixture(scope="module")
def decoy_firings() -> list[Firing]:
    b = _Builder(seed=4, size=SIZES["small"], start_ms=START)
    for fn in DECOYS.values():
        fn(b)
    return _firings(b.events, b.grants)


@pytest.mark.parametrize("scenario", sorted(GAMER_SCENARIOS))
def test_detector_fires_on_its_pattern(scenario: str) -> None:
    b = _isolated(GAMER_SCENARIOS[scenario])
    firings = _firings(b.events, b.grants)
    rule = SCENARIO_RULE[scenario]
    gamers = {a for a, lab in b.labels.items() if lab.is_gamer}
    assert _flagged(firings, rule) == gamers
    f = next(f for f in firings if f.rule_id == rule)
    assert 0.5 <= f.score <= 1.0 and f.severity in ("MEDIUM", "HIGH", "CRITICAL")
    assert f.evidence["sample_event_ids"] and len(f.evidence["sample_event_ids"]) <= 8
    assert isinstance(f.estimated_credits_exposed_micro, int)


@pytest.mark.parametrize("rule", [d.id for d in DETECTORS])
def test_detector_quiet_on_genuine_traffic(rule: str, genuine_firings: list[Firing],
                                           heavy_genuine_firings: list[Firing]) -> None:
    assert not [f for f in genuine_firings if f.rule_id == rule]
    assert not [f for f in heavy_genuine_firings if f.rule_id == rule]


@pytest.mark.parametrize("rule", [d.id for d in DETECTORS])
def test_detector_quiet_on_decoys(rule: str, decoy_firings: list[Firing]) -> None:
    assert not [f for f in decoy_firings if f.rule_id == rule]


def test_every_detector_is_documented_and_in_the_policy() -> None:

    from streams.credits.policy import load_policy

    policy = load_policy()
    for d in DETECTORS:
        assert d.id.startswith("CF-") and d.revision >= 1 and d.name and d.signal and d.window
        assert d.counter_signal_doc and d.suggested_action
        assert d.id in policy.detectors, f"{d.id} has no [detectors.{d.id}] section"
        assert set(policy.detectors[d.id]) == set(d.defaults)


def test_policy_overrides_reach_the_detector(tmp_path: Any) -> None:
    from importlib import resources

    text = resources.files("schemas").joinpath("policy/credit_policy.toml").read_text("utf-8")
    text = text.replace("[detectors.CF-012]   # Account sharing\nmin_devices = 4",
                        "[detectors.CF-012]   # Account sharing\nmin_devices = 50")
    assert "min_devices = 50" in text
    (tmp_path / "policy.toml").write_text(text)
    b = _isolated(GAMER_SCENARIOS["account_sharing"])
    assert _flagged(_firings(b.events, b.grants), "CF-012")
    assert not _flagged(_firings(b.events, b.grants, tmp_path / "policy.toml"), "CF-012")


# -- hand-made observations for controlled counter-signal twins ---------------------------------

def obs(i: int, t: int, account: str = "a1", **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": f"e{account}{i}", "account_id": account, "occurred_at": t, "plan": "FREE",
        "category": "STANDARD_CHAT", "model": "atlas-small", "outcome": "SUCCESS", "error_code": None,
        "input_tokens": 1000, "output_tokens": 500, "context_window_tokens": 2000, "context_uniqueness": None,
        "reasoning_steps": 0, "thinking_tokens": 0, "tool_calls": 0, "list_micro": 10_000,
        "charged_micro": 10_000, "grant_funded_micro": 10_000, "debits": [("g1", 10_000, 5_000_000)],
        "ip_hash": "ip1", "device_hash": "d1", "payment_hash": None, "prompt_fingerprint": f"p{i}",
    }
    base.update(kw)
    return base


def run(observations: Iterator[dict[str, Any]] | list[dict[str, Any]], rule: str) -> list[Firing]:
    eng = DetectorEngine(eval_every_events=1)
    state: dict[str, Any] = {}
    out: list[Firing] = []
    for o in observations:
        out += [f for f in eng.observe_account(state, o) if f.rule_id == rule]
    assert_round_trips(state)
    return out


def assert_round_trips(state: dict[str, Any]) -> None:
    """The state must survive a changelog round trip unchanged."""
    back = DETECTOR_TABLE_CODEC.decode(DETECTOR_TABLE_CODEC.encode({"d": state, "o": 0}))["d"]
    assert back == state


def best(firings: list[Firing]) -> float:
    return max((f.score for f in firings), default=0.0)


def test_round_the_clock_quiet_gap_lowers_the_score() -> None:
    def stream(skip_hours: range) -> list[dict[str, Any]]:
        out = []
        for i in range(26 * 4):
            t = START + i * 15 * MINUTE_MS
            if (t - START) // HOUR_MS in skip_hours:
                continue
            out.append(obs(i, t))
        return out

    bot = best(run(stream(range(0)), "CF-001"))
    napping = best(run(stream(range(20, 23)), "CF-001"))  # a 3-hour quiet gap, still >= 20 active hours
    assert bot >= 0.9
    assert napping < bot


@pytest.mark.parametrize("gap_ms", [1_000, 75_000, 600_000])
def test_cadence_catches_metronomes_from_one_second_to_ten_minutes(gap_ms: int) -> None:
    import random

    rng = random.Random(gap_ms)
    bot = [obs(i, START + i * gap_ms + rng.randint(-gap_ms // 20, gap_ms // 20)) for i in range(60)]
    assert best(run(bot, "CF-002")) >= 0.75
    # A paying customer's scheduled job: the same cadence, judged a counter-signal.
    assert best(run([{**o, "plan": "PRO"} for o in bot], "CF-002")) < 0.5
    # A person: turns 5 s to 2 min apart.
    t, person = START, []
    for i in range(60):
        t += rng.randint(5_000, 120_000)
        person.append(obs(i, t))
    assert not run(person, "CF-002")


def test_account_sharing_team_plan_and_single_network_are_counter_signals() -> None:
    def stream(plan: str, ips: int) -> list[dict[str, Any]]:
        return [obs(i, START + i * 10 * MINUTE_MS, plan=plan, device_hash=f"d{i % 6}", ip_hash=f"ip{i % ips}")
                for i in range(30)]

    free = best(run(stream("FREE", 5), "CF-012"))
    assert free >= 0.6
    assert best(run(stream("TEAM", 5), "CF-012")) < free
    assert best(run(stream("FREE", 1), "CF-012")) < free


def test_depletion_paying_customer_who_keeps_going_is_not_flagged() -> None:
    def stream(plan: str, keep_going: bool) -> list[dict[str, Any]]:
        out = []
        for i in range(25):  # 10 credits on a 10-credit grant within 5 hours, 25 requests
            bal = 10_000_000 - (i + 1) * 400_000
            out.append(obs(i, START + i * 12 * MINUTE_MS, plan=plan, charged_micro=400_000,
                           list_micro=1_400_000, category="EXTENDED_CONTEXT", grant_funded_micro=400_000,
                           debits=[("g1", 400_000, bal)]))
        if keep_going:
            out += [obs(100 + i, START + 5 * HOUR_MS + i * 3 * MINUTE_MS, plan=plan, charged_micro=1_000_000,
                        grant_funded_micro=0, debits=[]) for i in range(10)]
        return out

    eng_grant = {"event_type": "ISSUED", "grant_id": "g1", "account_id": "a1", "campaign": "c",
                 "amount_micro": 10_000_000, "granted_at": START, "expires_at": START + 30 * DAY_MS,
                 "priority": 0, "occurred_at": START}

    def score(plan: str, keep_going: bool) -> float:
        eng = DetectorEngine(eval_every_events=1)
        state: dict[str, Any] = {}
        eng.observe_grant(state, eng_grant)
        fs: list[Firing] = []
        for o in stream(plan, keep_going):
            fs += [f for f in eng.observe_account(state, o) if f.rule_id == "CF-003"]
        fs += [f for f in eng.evaluate_account(state, START + 7 * HOUR_MS) if f.rule_id == "CF-003"]
        return best(fs)

    farmer = score("FREE", False)
    assert farmer >= 0.75
    assert score("PRO", True) == 0.0  # both counter-signals: below min_score, no firing at all


def test_farming_counts_grant_holders_per_device_and_org_plans_count_against() -> None:
    def score(plan: str) -> float:
        eng = DetectorEngine(eval_every_events=1)
        fp: dict[str, Any] = {}
        fs: list[Firing] = []
        for i in range(12):
            o = obs(i, START + i * MINUTE_MS, account=f"acct{i % 6}", plan=plan, device_hash="shared")
            fs += eng.observe_fingerprint("device", fp, o)
        assert_round_trips(fp)
        return best([f for f in fs if f.rule_id == "CF-004"])

    assert score("FREE") >= 0.6
    assert score("TEAM") < score("FREE")


def test_farming_never_uses_ip_alone() -> None:
    eng = DetectorEngine(eval_every_events=1)
    # Ten accounts on one IP with their own devices: nothing to see on any device fingerprint.
    fps: dict[str, dict[str, Any]] = {}
    fs: list[Firing] = []
    for i in range(40):
        o = obs(i, START + i * MINUTE_MS, account=f"acct{i % 10}", ip_hash="office", device_hash=f"d{i % 10}")
        fs += eng.observe_fingerprint("device", fps.setdefault(o["device_hash"], {}), o)
    assert not fs


def test_spike_waits_for_warm_up_and_flagged_traffic_does_not_train() -> None:
    big: dict[str, Any] = {"charged_micro": 2_000_000, "list_micro": 7_000_000,
                           "category": "EXTENDED_CONTEXT", "grant_funded_micro": 2_000_000}
    early = [obs(i, START + i * MINUTE_MS, **big) for i in range(30)]  # no history yet
    assert not run(early, "CF-011")
    history = [obs(i, START + i * HOUR_MS) for i in range(48)]  # 48 quiet hours of small chat
    burst = [obs(100 + i, START + 48 * HOUR_MS + i * MINUTE_MS, **big) for i in range(30)]
    assert run(history + burst, "CF-011")

    eng = DetectorEngine(eval_every_events=1)
    state: dict[str, Any] = {}
    for o in [*history, *burst, obs(999, START + 50 * HOUR_MS)]:
        eng.observe_account(state, o)
    # The 60-credit burst hour was flagged, so folding it left the baseline where it was.
    assert state["CF-011"].baseline_micro < 100_000


def test_probing_broken_integration_counter_signal() -> None:
    probe = [obs(i, START + i * 10_000, outcome="REFUSED", error_code="E_REFUSED") for i in range(30)]
    assert best(run(probe, "CF-010")) >= 0.6
    broken = [obs(i, START + i * 10_000, outcome="ERROR", error_code="E_INVALID_REQUEST") for i in range(30)]
    assert best(run(broken, "CF-010")) < best(run(probe, "CF-010"))


def test_account_state_is_bounded() -> None:
    eng = DetectorEngine()
    state: dict[str, Any] = {}
    for i in range(5000):
        eng.observe_account(state, obs(i, START + i * 7_000, device_hash=f"d{i}", ip_hash=f"ip{i}",
                                       prompt_fingerprint=f"p{i}", debits=[(f"g{i}", 1, 0)]))
    size = len(DETECTOR_TABLE_CODEC.encode(state))
    assert size < 20_000, size
