"""Detection quality: pure scoring of alerts (or raw firings) against scenario labels.

An alert flags its entity when the entity is an account, and the accounts in ``related_entities``
when the entity is a fingerprint (a farming ring is caught when its accounts are named). Precision,
recall and false-positive rates are over accounts. Adversarial scenarios are scored but kept out
of the overall numbers, which the targets apply to.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.detection.alerts import new_alert_state, process_firing
from streams.detection.rules.base import SEVERITY_RANK, Firing
from streams.synthetic.scenarios import ADVERSARIAL, DECOY, GAMER, GENUINE, Label, ScenarioSet

HIGH = SEVERITY_RANK["HIGH"]


@dataclass
class ScenarioScore:
    scenario: str
    kind: str
    accounts: int
    gamers: int
    flagged: int
    true_positives: int
    recall: float | None
    precision: float | None
    own_rule_recall: float | None  # share of gamers caught by one of their expected rules
    caught_by_own_rule: bool | None
    credits_before_first_alert_micro: int  # gamers' charged credits up to their first alert
    credits_unflagged_micro: int  # charged credits of gamers never flagged
    raw_firings: int
    alerts: int
    max_severity: str | None
    rules: dict[str, int] = field(default_factory=dict)


@dataclass
class EvaluationResult:
    scenarios: list[ScenarioScore]
    precision: float
    recall: float
    genuine_fpr: float
    decoy_fpr: float
    decoy_flagged_high: bool
    detectors_catch_own: dict[str, bool]
    adversarial_recall: float | None
    raw_firings: int
    alerts: int


def flagged_accounts(entity_type: str, entity_id: str, related: Iterable[str]) -> list[str]:
    if entity_type == "account":
        return [entity_id]
    return [r.split(":", 1)[1] for r in related if r.startswith("account:")]


def alerts_from_firings(firings: Sequence[Firing]) -> tuple[list[dict[str, Any]], int]:
    """Run firings through the alert builder in order; returns the distinct alerts (latest version of
    each alert id) and how many emissions were published."""
    state = new_alert_state()
    latest: dict[str, dict[str, Any]] = {}
    emitted = 0
    for f in sorted(firings, key=lambda f: f.window_end):
        out = process_firing(state, f)
        if out is not None:
            emitted += 1
            latest[out["alert_id"]] = out
    # Silent updates never reach the topic; the state holds the final view of every open alert.
    for alert in state["open"].values():
        latest[alert["alert_id"]] = dict(alert)
    return list(latest.values()), emitted


def score(
    labels: Mapping[str, Label],
    alerts: Sequence[Mapping[str, Any]],
    *,
    firings: Sequence[Firing] = (),
    usage: Mapping[str, Sequence[tuple[int, int]]] | None = None,
    scenario_rules: Mapping[str, str] | None = None,
) -> EvaluationResult:
    """``alerts``: GamingAlert dicts; ``firings``: the raw firings (counted only); ``usage``: account ->
    [(occurred_at, charged_micro)] in time order, for credits consumed before the first alert;
    ``scenario_rules``: scenario -> the rule it exists to exercise."""
    first_alert: dict[str, int] = {}
    max_sev: dict[str, int] = {}
    rules_by_account: dict[str, set[str]] = defaultdict(set)
    alerts_by_scenario: dict[str, int] = defaultdict(int)
    for alert in alerts:
        accts = flagged_accounts(alert["entity_type"], alert["entity_id"], alert.get("related_entities", ()))
        seen_scenarios: set[str] = set()
        first_seen = int(alert["first_seen_at"])
        for acct in accts:
            first_alert[acct] = min(first_alert.get(acct, first_seen), first_seen)
            max_sev[acct] = max(max_sev.get(acct, -1), SEVERITY_RANK[alert["severity"]])
            rules_by_account[acct].add(alert["rule_id"])
            lab = labels.get(acct)
            if lab is not None:
                seen_scenarios.add(lab.scenario)
        for sc in seen_scenarios:
            alerts_by_scenario[sc] += 1
    firings_by_scenario: dict[str, int] = defaultdict(int)
    for f in firings:
        named = flagged_accounts(f.entity_type, f.entity_id, f.related_entities)
        for sc in {labels[x].scenario for x in named if x in labels}:
            firings_by_scenario[sc] += 1

    by_scenario: dict[str, list[str]] = defaultdict(list)
    for acct, lab in labels.items():
        by_scenario[lab.scenario].append(acct)
    scores: list[ScenarioScore] = []
    for sc, accts in sorted(by_scenario.items()):
        kind = labels[accts[0]].kind
        gamers = [a for a in accts if labels[a].is_gamer]
        flagged = [a for a in accts if a in first_alert]
        tp = [a for a in flagged if labels[a].is_gamer]
        own = [a for a in gamers if rules_by_account[a] & labels[a].expected_rule_ids]
        before = unflagged = 0
        if usage is not None:
            for a in gamers:
                cut = first_alert.get(a)
                spent = usage.get(a, ())
                if cut is None:
                    unflagged += sum(c for _, c in spent)
                else:
                    before += sum(c for t, c in spent if t <= cut)
        rule_counts: dict[str, int] = defaultdict(int)
        for a in flagged:
            for r in rules_by_account[a]:
                rule_counts[r] += 1
        sev = max((max_sev[a] for a in flagged), default=None)
        scores.append(ScenarioScore(
            scenario=sc, kind=kind, accounts=len(accts), gamers=len(gamers), flagged=len(flagged),
            true_positives=len(tp),
            recall=len(tp) / len(gamers) if gamers else None,
            precision=len(tp) / len(flagged) if flagged else None,
            own_rule_recall=len(own) / len(gamers) if gamers else None,
            caught_by_own_rule=(len(own) * 2 >= len(gamers)) if gamers else None,
            credits_before_first_alert_micro=before, credits_unflagged_micro=unflagged,
            raw_firings=firings_by_scenario.get(sc, 0), alerts=alerts_by_scenario.get(sc, 0),
            max_severity=None if sev is None else list(SEVERITY_RANK)[sev], rules=dict(rule_counts),
        ))

    def pick(*kinds: str) -> list[str]:
        return [a for a, lab in labels.items() if lab.kind in kinds]

    core = pick(GENUINE, GAMER, DECOY)
    core_flagged = [a for a in core if a in first_alert]
    core_gamers = [a for a in core if labels[a].is_gamer]
    tp_core = [a for a in core_flagged if labels[a].is_gamer]
    genuine, decoys, adv = pick(GENUINE), pick(DECOY), pick(ADVERSARIAL)
    own_catch: dict[str, bool] = {}
    own_rule = scenario_rules or {}
    for s in scores:
        if s.kind == GAMER and s.scenario in own_rule:
            rule = own_rule[s.scenario]
            members = by_scenario[s.scenario]
            own_catch[rule] = sum(1 for a in members if rule in rules_by_account[a]) * 2 >= len(members)
    return EvaluationResult(
        scenarios=scores,
        precision=len(tp_core) / len(core_flagged) if core_flagged else 1.0,
        recall=len(tp_core) / len(core_gamers) if core_gamers else 1.0,
        genuine_fpr=sum(1 for a in genuine if a in first_alert) / len(genuine) if genuine else 0.0,
        decoy_fpr=sum(1 for a in decoys if a in first_alert) / len(decoys) if decoys else 0.0,
        decoy_flagged_high=any(max_sev.get(a, -1) >= HIGH for a in decoys),
        detectors_catch_own=own_catch,
        adversarial_recall=sum(1 for a in adv if a in first_alert) / len(adv) if adv else None,
        raw_firings=len(firings),
        alerts=len(alerts),
    )


def evaluate_offline(scenarios: ScenarioSet, engine: Any = None) -> EvaluationResult:
    """Run a scenario set through ``DetectorEngine.run_offline`` and the alert builder, then score."""
    from streams.detection.rulebook import DetectorEngine
    from streams.synthetic.scenarios import SCENARIO_RULE

    eng = engine or DetectorEngine()
    usage: dict[str, list[tuple[int, int]]] = defaultdict(list)
    firings = eng.run_offline(
        scenarios.events, scenarios.grants,
        on_observation=lambda o: usage[o["account_id"]].append((o["occurred_at"], o["charged_micro"])),
    )
    alerts, _ = alerts_from_firings(firings)
    return score(scenarios.labels, alerts, firings=firings, usage=usage, scenario_rules=SCENARIO_RULE)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"


def render_table(result: EvaluationResult) -> Any:
    """A rich renderable: per-scenario rows then the overall numbers."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    t = Table(title="Credit-gaming detection quality", show_lines=False)
    for col in ("scenario", "kind", "accts", "gamers", "flagged", "recall", "precision", "own rule",
                "credits before 1st alert", "firings", "alerts", "max sev", "rules"):
        t.add_column(col, justify="left" if col in ("scenario", "kind", "rules") else "right")
    for s in result.scenarios:
        t.add_row(
            s.scenario, s.kind, str(s.accounts), str(s.gamers), str(s.flagged), _pct(s.recall),
            _pct(s.precision), _pct(s.own_rule_recall),
            f"{s.credits_before_first_alert_micro / 1_000_000:.2f}", str(s.raw_firings), str(s.alerts),
            s.max_severity or "-", ", ".join(f"{r}x{n}" for r, n in sorted(s.rules.items())),
        )
    caught = ", ".join(f"{r}:{'yes' if ok else 'NO'}" for r, ok in sorted(result.detectors_catch_own.items()))
    summary = Text(
        f"precision {_pct(result.precision)}  recall {_pct(result.recall)}  "
        f"genuine FPR {_pct(result.genuine_fpr)}  decoy FPR {_pct(result.decoy_fpr)}  "
        f"decoy flagged HIGH+: {'YES' if result.decoy_flagged_high else 'no'}  "
        f"adversarial recall {_pct(result.adversarial_recall)}  "
        f"raw firings {result.raw_firings} -> alerts {result.alerts}\n"
        f"own scenario caught: {caught}"
    )
    return Group(t, summary)
