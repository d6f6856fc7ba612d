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

from streams.detection.rules.base import SEVERITIES, SEVERITY_RANK, Firing
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


def evaluate_offline(scenarios: ScenarioSet) -> EvaluationResult:
    """Run a scenario set through the processor's meter and detection in this process
    (``streams.synthetic.in_process``), then score its alerts."""
    from streams.synthetic.in_process import run_in_process
    from streams.synthetic.scenarios import SCENARIO_RULE

    run = run_in_process(scenarios)
    return score(scenarios.labels, run.latest, firings=run.firings, usage=run.usage, scenario_rules=SCENARIO_RULE)


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


# -- randomised patterns (``streams.synthetic.patterns``) -----------------------------------------

EARLY_SHARE = 0.2  # "alerted before 20% of its eventual credits were spent"


@dataclass
class PatternScore:
    pattern: str
    rule_id: str
    gamers: int = 0
    caught: int = 0  # gamers named by any alert
    caught_by_rule: int = 0  # gamers named by an alert of the pattern's own rule
    early: int = 0  # gamers alerted before EARLY_SHARE of their eventual credits were spent
    spent_before_micro: int = 0  # gamers' charged credits up to their first alert (all of it if never)
    spent_micro: int = 0
    decoys: int = 0
    decoys_by_severity: dict[str, int] = field(default_factory=dict)  # decoys flagged, by max severity

    @property
    def recall(self) -> float:
        return self.caught / self.gamers if self.gamers else 1.0


@dataclass
class PatternsResult:
    patterns: list[PatternScore]
    precision: float
    recall: float
    early_share: float  # share of gamers alerted before EARLY_SHARE of their credits were spent
    genuine: int
    genuine_flagged: int
    flagged: int
    true_positives: int
    decoy_high: int  # decoys flagged at HIGH or above
    alerts: int
    unknown_model_events: int = 0
    rules_per_pattern: dict[str, dict[str, int]] = field(default_factory=dict)


def score_patterns(labels: Mapping[str, Label], alerts: Sequence[Mapping[str, Any]],
                   usage: Mapping[str, Sequence[tuple[int, int]]], pattern_rules: Mapping[str, str],
                   *, unknown_model_events: int = 0) -> PatternsResult:
    """``alerts``: one GamingAlert per alert id; ``usage``: account -> [(occurred_at, charged_micro)]."""
    first_alert: dict[str, int] = {}
    max_sev: dict[str, int] = {}
    rules: dict[str, set[str]] = defaultdict(set)
    for alert in alerts:
        for acct in flagged_accounts(alert["entity_type"], alert["entity_id"], alert.get("related_entities", ())):
            first_alert[acct] = min(first_alert.get(acct, alert["first_seen_at"]), int(alert["first_seen_at"]))
            max_sev[acct] = max(max_sev.get(acct, -1), SEVERITY_RANK[alert["severity"]])
            rules[acct].add(alert["rule_id"])
    scores = {p: PatternScore(p, r) for p, r in pattern_rules.items()}
    per_rule: dict[str, dict[str, int]] = {p: defaultdict(int) for p in pattern_rules}
    genuine = genuine_flagged = decoy_high = 0
    for acct, lab in labels.items():
        flagged = acct in first_alert
        if lab.kind == GENUINE:
            genuine += 1
            genuine_flagged += flagged
            continue
        pattern = lab.scenario.removeprefix("decoy:")
        s = scores[pattern]
        if lab.kind == DECOY:
            s.decoys += 1
            if flagged:
                sev = SEVERITIES[max_sev[acct]]
                s.decoys_by_severity[sev] = s.decoys_by_severity.get(sev, 0) + 1
                decoy_high += max_sev[acct] >= HIGH
            continue
        s.gamers += 1
        spent = usage.get(acct, ())
        total = sum(c for _, c in spent)
        s.spent_micro += total
        if not flagged:
            s.spent_before_micro += total
            continue
        s.caught += 1
        s.caught_by_rule += s.rule_id in rules[acct]
        for r in rules[acct]:
            per_rule[pattern][r] += 1
        before = sum(c for t, c in spent if t <= first_alert[acct])
        s.spent_before_micro += before
        s.early += before <= total * EARLY_SHARE
    flagged_all = [a for a in labels if a in first_alert]
    tp = sum(1 for a in flagged_all if labels[a].is_gamer)
    gamers = sum(s.gamers for s in scores.values())
    return PatternsResult(
        patterns=list(scores.values()),
        precision=tp / len(flagged_all) if flagged_all else 1.0,
        recall=sum(s.caught for s in scores.values()) / gamers if gamers else 1.0,
        early_share=sum(s.early for s in scores.values()) / gamers if gamers else 1.0,
        genuine=genuine, genuine_flagged=genuine_flagged, flagged=len(flagged_all), true_positives=tp,
        decoy_high=decoy_high, alerts=len(alerts), unknown_model_events=unknown_model_events,
        rules_per_pattern={p: dict(v) for p, v in per_rule.items()},
    )


def merge_patterns(results: Sequence[PatternsResult]) -> PatternsResult:
    """Several seeds' results as one (sums of counts, ratios recomputed)."""
    by: dict[str, PatternScore] = {}
    rules: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in results:
        for s in r.patterns:
            m = by.setdefault(s.pattern, PatternScore(s.pattern, s.rule_id))
            for f in ("gamers", "caught", "caught_by_rule", "early", "spent_before_micro", "spent_micro", "decoys"):
                setattr(m, f, getattr(m, f) + getattr(s, f))
            for sev, n in s.decoys_by_severity.items():
                m.decoys_by_severity[sev] = m.decoys_by_severity.get(sev, 0) + n
        for p, counts in r.rules_per_pattern.items():
            for rule, n in counts.items():
                rules[p][rule] += n
    flagged = sum(r.flagged for r in results)
    tp = sum(r.true_positives for r in results)
    gamers = sum(s.gamers for s in by.values())
    return PatternsResult(
        patterns=list(by.values()),
        precision=tp / flagged if flagged else 1.0,
        recall=sum(s.caught for s in by.values()) / gamers if gamers else 1.0,
        early_share=sum(s.early for s in by.values()) / gamers if gamers else 1.0,
        genuine=sum(r.genuine for r in results), genuine_flagged=sum(r.genuine_flagged for r in results),
        flagged=flagged, true_positives=tp, decoy_high=sum(r.decoy_high for r in results),
        alerts=sum(r.alerts for r in results), unknown_model_events=sum(r.unknown_model_events for r in results),
        rules_per_pattern={p: dict(v) for p, v in rules.items()},
    )


def render_patterns(result: PatternsResult, title: str) -> Any:
    """A rich renderable: one row per pattern, then the overall numbers."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title)
    for col in ("pattern", "rule", "gamers", "caught", "recall", "by own rule", "alerted <20% spent",
                "credits before 1st alert", "decoys", "decoys flagged (max severity)", "rules"):
        t.add_column(col, justify="left" if col in ("pattern", "rule", "rules") or "decoys flagged" in col
                     else "right")
    for s in result.patterns:
        flagged = ", ".join(f"{sev} {s.decoys_by_severity[sev]}" for sev in SEVERITIES
                            if s.decoys_by_severity.get(sev)) or "none"
        share = s.spent_before_micro / s.spent_micro if s.spent_micro else 0.0
        t.add_row(s.pattern, s.rule_id, str(s.gamers), str(s.caught), _pct(s.recall),
                  _pct(s.caught_by_rule / s.gamers if s.gamers else None),
                  _pct(s.early / s.gamers if s.gamers else None), _pct(share), str(s.decoys), flagged,
                  ", ".join(f"{r} {n}" for r, n in sorted(result.rules_per_pattern.get(s.pattern, {}).items())))
    summary = Text(
        f"precision {result.precision:.3f} ({result.true_positives} of {result.flagged} flagged accounts are gamers)  "
        f"recall {result.recall:.3f}  alerted before 20% of credits: {result.early_share:.3f}  "
        f"decoys at HIGH+: {result.decoy_high}  genuine flagged: {result.genuine_flagged} of {result.genuine}  "
        f"alerts: {result.alerts}  events on unpriced models: {result.unknown_model_events}"
    )
    return Group(t, summary)
