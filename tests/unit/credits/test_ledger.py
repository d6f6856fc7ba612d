"""Grant burn-down: order, expiry, revocation, idempotent grant events."""

from __future__ import annotations

from streams.credits.ledger import apply_grant_event, burn_order, debit

DAY = 86_400_000


def _grant(gid: str, amount: int, expires: int, priority: int = 0, granted: int = 0) -> dict:
    return {"event_type": "ISSUED", "grant_id": gid, "account_id": "a", "campaign": "c", "amount_micro": amount,
            "granted_at": granted, "expires_at": expires, "priority": priority, "occurred_at": granted}


def test_soonest_expiring_first_then_priority_then_oldest() -> None:
    grants: dict = {}
    for g in (_grant("late", 10, 30 * DAY), _grant("soon", 10, 5 * DAY), _grant("soon-prio", 10, 5 * DAY, 2),
              _grant("soon-old", 10, 5 * DAY, 0, granted=-DAY)):
        apply_grant_event(grants, g)
    assert burn_order(grants) == ["soon-prio", "soon-old", "soon", "late"]


def test_debit_spills_over_and_marks_the_rest_for_the_subscription() -> None:
    grants: dict = {}
    apply_grant_event(grants, _grant("a", 5, 10 * DAY))
    apply_grant_event(grants, _grant("b", 3, 20 * DAY))
    spent: dict = {}
    debits, uncovered = debit(grants, spent, 7, DAY)
    assert [(d.grant_id, d.amount_micro, d.balance_after_micro) for d in debits] == [("a", 5, 0), ("b", 2, 1)]
    assert uncovered == 0
    debits, uncovered = debit(grants, spent, 4, DAY)
    assert [(d.grant_id, d.amount_micro) for d in debits] == [("b", 1)]
    assert uncovered == 3
    assert spent == {"a": 5, "b": 3}


def test_expired_and_revoked_grants_cover_nothing() -> None:
    grants: dict = {}
    apply_grant_event(grants, _grant("old", 100, 2 * DAY))
    apply_grant_event(grants, _grant("rev", 100, 20 * DAY))
    apply_grant_event(grants, {"event_type": "REVOKED", "grant_id": "rev", "occurred_at": 3 * DAY})
    spent: dict = {}
    # Before expiry and revocation both cover (the soonest-expiring first).
    debits, _ = debit(grants, spent, 10, DAY)
    assert [d.grant_id for d in debits] == ["old"]
    # After both, usage goes to the subscription.
    debits, uncovered = debit(grants, spent, 10, 4 * DAY)
    assert debits == [] and uncovered == 10


def test_grant_events_are_idempotent() -> None:
    grants: dict = {}
    g = _grant("a", 5, DAY)
    assert apply_grant_event(grants, g) is True
    assert apply_grant_event(grants, g) is False
    revoke = {"event_type": "REVOKED", "grant_id": "a", "occurred_at": 10}
    assert apply_grant_event(grants, revoke) is True
    assert apply_grant_event(grants, revoke) is False
    # A revocation that overtook its issue still wins once the issue arrives.
    late: dict = {}
    apply_grant_event(late, {"event_type": "REVOKED", "grant_id": "z", "occurred_at": 10})
    apply_grant_event(late, _grant("z", 5, DAY))
    assert late["z"]["revoked_at"] == 10 and late["z"]["amount"] == 5
