"""Notifications: once per grant and threshold, from the memory kept in the account's state."""

from __future__ import annotations

import copy
from typing import Any

from streams.credits.account_state import AccountUsage
from streams.credits.balances import balance_record
from streams.credits.notifications import notifications_for
from streams.credits.policy import CompiledPolicy, load_policy

DAY = 86_400_000
T0 = 1_793_000_000_000
POLICY = load_policy()


def _grants(days: int = 90) -> dict[str, Any]:
    return {"g1": {"amount": 10_000_000, "campaign": "c", "granted_at": T0, "expires_at": T0 + days * DAY,
                   "priority": 0, "revoked_at": None}}


def _kinds(spent: int, sent: list[str], at: int = T0 + DAY, days: int = 90, seq: int = 1) -> tuple[list[Any],
                                                                                                    list[str]]:
    usage = AccountUsage(input_partition=0, applied_offset=5, spent_by_grant={"g1": spent}, event_time_ms=at,
                         balance_seq=seq)
    return notifications_for(POLICY, balance_record("a", _grants(days), usage, "pv", 0, at), sent, at)


def test_each_threshold_once_in_order_and_exhaustion_is_its_own_kind() -> None:
    notes, sent = _kinds(4_000_000, [])
    assert notes == [] and sent == ["hi"]
    notes, sent = _kinds(8_500_000, sent)  # 50% and 80% crossed in one step: both, once
    assert [(n["kind"], n["threshold_pct"]) for n in notes] == [("USAGE_THRESHOLD", 50), ("USAGE_THRESHOLD", 80)]
    assert notes[0]["grant_id"] == "g1" and notes[1]["grant_remaining_micro"] == 1_500_000
    again, sent2 = _kinds(8_600_000, sent)
    assert again == [] and sent2 == sent
    notes, sent = _kinds(10_000_000, sent2, seq=3)
    assert [n["kind"] for n in notes] == ["GRANT_EXHAUSTED", "LOW_BALANCE"]
    assert notes[0]["threshold_pct"] == 100 and notes[1]["floor_micro"] == POLICY.low_balance_floor_micro
    assert _kinds(10_000_000, sent, seq=4)[0] == []
    ids = [n["notification_id"] for n in notes]
    assert len(set(ids)) == 2 and all(i.startswith("a/") for i in ids)


def test_the_same_balance_and_memory_give_the_same_ids() -> None:
    first = _kinds(9_900_000, ["hi"])[0]
    assert [n["notification_id"] for n in first] == [n["notification_id"] for n in _kinds(9_900_000, ["hi"])[0]]


def test_low_balance_is_rearmed_when_the_balance_is_back_above_the_floor() -> None:
    notes, sent = _kinds(9_500_000, ["g1:50", "g1:80", "hi"], seq=2)
    assert [n["kind"] for n in notes] == ["LOW_BALANCE"] and "hi" not in sent
    assert notes[0]["notification_id"] == "a/LOW_BALANCE/1"
    assert _kinds(9_600_000, sent, seq=3)[0] == []
    _none, sent = _kinds(1_000_000, sent, seq=4)  # e.g. a grant re-issued larger: above the floor again
    assert "hi" in sent
    notes, _ = _kinds(9_500_000, sent, seq=5)
    assert [n["kind"] for n in notes] == ["LOW_BALANCE"]
    assert notes[0]["notification_id"] == "a/LOW_BALANCE/2"  # the second fall, whatever the batches


def test_expiry_warning_once_within_the_window_and_not_for_a_used_up_grant() -> None:
    at = T0 + 85 * DAY  # 5 days before a 90-day grant expires; the policy warns 7 days ahead
    notes, sent = _kinds(0, [], at=at)
    assert [n["kind"] for n in notes] == ["GRANT_EXPIRING"] and notes[0]["expires_at"] == T0 + 90 * DAY
    assert _kinds(0, sent, at=at + DAY)[0] == []
    assert _kinds(0, [], at=T0 + 80 * DAY)[0] == []
    assert "GRANT_EXPIRING" not in [n["kind"] for n in _kinds(10_000_000, [], at=at)[0]]


def _policy_with(thresholds: list[int]) -> CompiledPolicy:
    policy = copy.copy(POLICY)
    policy.usage_thresholds_pct = tuple(thresholds)
    return policy


def _notes(policy: CompiledPolicy, spent: int, sent: list[str], seq: int = 5) -> tuple[list[Any], list[str]]:
    usage = AccountUsage(input_partition=0, applied_offset=5, spent_by_grant={"g1": spent}, event_time_ms=T0 + DAY,
                         balance_seq=seq)
    return notifications_for(policy, balance_record("a", _grants(), usage, "pv", 0, T0 + DAY), sent, T0 + DAY)


def test_a_policy_adding_thresholds_announces_none_below_one_already_announced() -> None:
    # Exhausted under 50/80; the next policy names 25/50/90: nothing new to say about this grant.
    notes, sent = _notes(_policy_with([25, 50, 90]), 10_000_000, ["g1:100", "g1:50", "g1:80", "low#1"])
    assert notes == []
    assert {"g1:25", "g1:90"} <= set(sent)  # judged once, not on every later balance
    # At 85% under 50/80; the new 25 is history, the new 90 is announced once crossed.
    notes, sent = _notes(_policy_with([25, 50, 90]), 8_500_000, ["g1:50", "g1:80", "hi"])
    assert notes == []
    notes, _ = _notes(_policy_with([25, 50, 90]), 9_100_000, sent)
    assert [(n["kind"], n["threshold_pct"]) for n in notes] == [("USAGE_THRESHOLD", 90), ("LOW_BALANCE", None)]


def test_a_jump_past_every_threshold_announces_each_once_in_one_balance() -> None:
    notes, sent = _notes(_policy_with([10, 25, 50, 75, 90]), 10_000_000, ["hi"], seq=1)
    assert [(n["kind"], n["threshold_pct"]) for n in notes][:6] == [
        ("USAGE_THRESHOLD", 10), ("USAGE_THRESHOLD", 25), ("USAGE_THRESHOLD", 50), ("USAGE_THRESHOLD", 75),
        ("USAGE_THRESHOLD", 90), ("GRANT_EXHAUSTED", 100)]
    assert len({n["notification_id"] for n in notes}) == len(notes)
    assert _notes(_policy_with([10, 25, 50, 75, 90]), 10_000_000, sent)[0] == []
