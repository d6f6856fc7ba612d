"""Firings -> GamingAlert records: one open alert per finding, suppression per rule and entity, and
the reviewer's verdicts. Pure functions over a JSON-able state dict (a Faust table keyed by entity).

State (``new_alert_state``)::

    {"open":     {dedup_key: GamingAlert dict},       # capped, oldest by last_seen evicted
     "latest":   {"rule|etype|eid": dedup_key},       # the finding suppression folds firings into
     "suppress": {"rule|etype|eid": until_ms},
     "allow":    {"rule|etype|eid": until_ms},         # false positives: no alerts until then
     "marked":   {"etype|eid": {"rule_id", "alert_id", "at"}},  # confirmed gamers
     "decisions": [decision_id, ...]}                  # recent decisions, for idempotency

Time is always event time (the firing's window end, the decision's ``decided_at``), so a replay
after a crash makes the same decisions and the same ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from streams.detection.rules.base import DAY_MS, SEVERITY_RANK, Firing, decimal_text

DEFAULTS: dict[str, int] = {
    "reemit_every": 10,  # re-publish an open alert every K firings even without a severity rise
    "suppress_ms": DAY_MS,  # after an alert, new windows of the same rule+entity fold into it
    "allow_ms": 30 * DAY_MS,  # false-positive allow-list entry when the reviewer gives no expiry
    "benign_ms": 7 * DAY_MS,  # suppression a BENIGN verdict adds when no expiry is given
    "bucket_ms": DAY_MS,  # dedup window bucket
    "max_open": 256,
    "max_decisions": 128,
}
VERDICTS = ("CONFIRMED", "FALSE_POSITIVE", "BENIGN", "NEEDS_INFO")


def new_alert_state() -> dict[str, Any]:
    return {"open": {}, "latest": {}, "suppress": {}, "allow": {}, "marked": {}, "decisions": []}


def dedup_key(firing: Firing, bucket_ms: int = DEFAULTS["bucket_ms"]) -> str:
    # The window bucket comes from the window's end: a sliding window's start moves every firing,
    # its end's day does not until the finding is a day older.
    return (f"{firing.rule_id}|r{firing.rule_revision}|{firing.entity_type}|{firing.entity_id}|"
            f"{firing.window_end // bucket_ms}")


def alert_id_for(key: str) -> str:
    """Deterministic in the dedup key: a replay re-creates the same id, and every emission of one
    finding (OPEN, then UPDATED) carries it, so the sink keeps the latest version by id."""
    return "al-" + hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def _re(rule_id: str, entity_type: str, entity_id: str) -> str:
    return f"{rule_id}|{entity_type}|{entity_id}"


def process_firing(state: dict[str, Any], firing: Firing, cfg: Mapping[str, int] | None = None
                   ) -> dict[str, Any] | None:
    """Fold one firing into the state. Returns the GamingAlert to publish, or None when the firing
    only updated an alert silently, was suppressed, or the entity is allow-listed."""
    c = {**DEFAULTS, **(cfg or {})}
    now = firing.window_end
    re_key = _re(firing.rule_id, firing.entity_type, firing.entity_id)
    if state["allow"].get(re_key, -1) > now:
        return None
    key = dedup_key(firing, c["bucket_ms"])
    alert = state["open"].get(key)
    if alert is None and state["suppress"].get(re_key, -1) > now:
        latest = state["latest"].get(re_key)
        alert = state["open"].get(latest) if latest else None
        if alert is None:
            return None  # suppressed by a verdict, nothing open to update
    if alert is not None:
        return _update(alert, firing, c)
    alert = _new_alert(key, firing)
    state["open"][key] = alert
    state["latest"][re_key] = key
    state["suppress"][re_key] = max(state["suppress"].get(re_key, -1), now + c["suppress_ms"])
    _prune(state, c["max_open"])
    return dict(alert)


def _update(alert: dict[str, Any], firing: Firing, c: Mapping[str, int]) -> dict[str, Any] | None:
    alert["firings"] += 1
    alert["last_seen_at"] = max(alert["last_seen_at"], firing.window_end)
    alert["window_end"] = max(alert["window_end"], firing.window_end)
    alert["status"] = "UPDATED"
    rose = SEVERITY_RANK[firing.severity] > SEVERITY_RANK[alert["severity"]]
    if firing.score >= alert["score"]:
        # The strongest evidence explains the finding best; keep it.
        alert.update(_finding_fields(firing))
    alert["estimated_credits_exposed_micro"] = max(alert["estimated_credits_exposed_micro"],
                                                    firing.estimated_credits_exposed_micro)
    if rose or alert["firings"] % c["reemit_every"] == 0:
        return dict(alert)
    return None


def _finding_fields(f: Firing) -> dict[str, Any]:
    return {
        "severity": f.severity,
        "score": f.score,
        "observed": f.observed,
        "limit": f.limit,
        "observed_value": f.observed_value,
        "limit_value": f.limit_value,
        "counter_signals": list(f.counter_signals),
        "evidence": {
            "counts": dict(f.evidence.get("counts", {})),
            "credits_by_category": dict(f.evidence.get("credits_by_category", {})),
            "sample_event_ids": list(f.evidence.get("sample_event_ids", [])),
        },
        "sample_event_ids": list(f.evidence.get("sample_event_ids", [])),
        "related_entities": list(f.related_entities),
        "plan": f.plan,
        "grant_id": f.grant_id,
    }


def _new_alert(key: str, f: Firing) -> dict[str, Any]:
    return {
        "alert_id": alert_id_for(key),
        "dedup_key": key,
        "rule_id": f.rule_id,
        "rule_name": f.rule_name,
        "rule_revision": f.rule_revision,
        "entity_type": f.entity_type,
        "entity_id": f.entity_id,
        "window_start": f.window_start,
        "window_end": f.window_end,
        "estimated_credits_exposed_micro": f.estimated_credits_exposed_micro,
        "suggested_action": f.suggested_action,
        "first_seen_at": f.window_end,
        "last_seen_at": f.window_end,
        "firings": 1,
        "status": "OPEN",
        **_finding_fields(f),
    }


def _prune(state: dict[str, Any], max_open: int) -> None:
    opened = state["open"]
    while len(opened) > max_open:
        victim = min(opened, key=lambda k: opened[k]["last_seen_at"])
        del opened[victim]
    latest = state["latest"]
    for re_key in [k for k, v in latest.items() if v not in opened]:
        del latest[re_key]


_STATE_ONLY = frozenset({"sample_event_ids", "observed_value", "limit_value"})


def to_avro(alert: Mapping[str, Any]) -> dict[str, Any]:
    """The GamingAlert record as the Avro schema names it: ``observed`` and ``limit`` are the rule's
    measure and threshold as exact decimal strings, from the numbers the rule gave; the state's
    ``observed``/``limit`` are the rule's display labels and travel as ``observed_label`` /
    ``limit_label`` (v2); ``sample_event_ids`` lives in evidence."""
    out = {k: v for k, v in alert.items() if k not in _STATE_ONLY}
    out["observed"] = decimal_text(alert.get("observed_value", 0.0))
    out["limit"] = decimal_text(alert.get("limit_value", 0.0))
    out["observed_label"] = str(alert.get("observed", ""))
    out["limit_label"] = str(alert.get("limit", ""))
    return out


def measure_text(value: Any, label: str | None) -> str:
    """A rule's number with its phrase for people, the way alerts are shown: ``84% of the grant
    spent in 16.3h (16.3)``. The number alone when there is no label (an alert written before
    GamingAlert v2) or the label says nothing more. ``value``: the wire's decimal string or the
    table's float."""
    number = decimal_text(value) if isinstance(value, float) else str(value)
    return f"{label} ({number})" if label and label != number else number


def is_suppressed(state: Mapping[str, Any], rule_id: str, entity_type: str, entity_id: str,
                  at_ms: int) -> bool:
    re_key = _re(rule_id, entity_type, entity_id)
    return state["allow"].get(re_key, -1) > at_ms or state["suppress"].get(re_key, -1) > at_ms


def apply_review(state: dict[str, Any], decision: Mapping[str, Any],
                 cfg: Mapping[str, int] | None = None) -> bool:
    """Fold a ReviewDecision into the state. Idempotent on ``decision_id``; returns whether it changed
    anything. CONFIRMED marks the entity and resets suppression (new findings alert again);
    FALSE_POSITIVE allow-lists rule+entity until ``allow_until`` (or a default) and closes the alert;
    BENIGN extends suppression; NEEDS_INFO changes nothing."""
    c = {**DEFAULTS, **(cfg or {})}
    verdict = decision["verdict"]
    if verdict not in VERDICTS:
        raise ValueError(f"unknown verdict {verdict!r}")
    did = decision["decision_id"]
    if did in state["decisions"]:
        return False
    state["decisions"].append(did)
    if len(state["decisions"]) > c["max_decisions"]:
        del state["decisions"][0]
    at = int(decision["decided_at"])
    until = decision.get("allow_until")
    re_key = _re(decision["rule_id"], decision["entity_type"], decision["entity_id"])
    if verdict == "CONFIRMED":
        state["marked"][f"{decision['entity_type']}|{decision['entity_id']}"] = {
            "rule_id": decision["rule_id"], "alert_id": decision["alert_id"], "at": at}
        state["suppress"].pop(re_key, None)
        return True
    if verdict == "FALSE_POSITIVE":
        state["allow"][re_key] = max(state["allow"].get(re_key, -1),
                                     int(until) if until is not None else at + c["allow_ms"])
        key = decision.get("dedup_key") or state["latest"].get(re_key)
        if key:
            state["open"].pop(key, None)
        state["latest"].pop(re_key, None)
        return True
    if verdict == "BENIGN":
        state["suppress"][re_key] = max(state["suppress"].get(re_key, -1),
                                        int(until) if until is not None else at + c["benign_ms"])
        return True
    return False
