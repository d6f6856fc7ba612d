"""Grant burn-down: which credit grants pay for a charged request. Pure functions, no I/O.

Grant state is kept as plain JSON-able dicts because it lives in changelog-backed state tables
(``streams/runtime/changelog.py``), serialised as JSON:

    grants[account]  = {grant_id: {"amount": int, "campaign": str, "granted_at": ms,
                                   "expires_at": ms, "priority": int, "revoked_at": ms | None}}
    spent[grant_id]  = micro-credits already debited from that grant
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

GrantState = Mapping[str, Any]


class Debit(NamedTuple):
    grant_id: str
    campaign: str
    amount_micro: int
    balance_after_micro: int


def covers(grant: GrantState, at_ms: int) -> bool:
    """A grant covers usage that happened inside its validity and before any revocation. Event time
    (not processing time) decides, so a replay reaches the same answer."""
    revoked_at = grant.get("revoked_at")
    if revoked_at is not None and at_ms >= revoked_at:
        return False
    return bool(grant["granted_at"] <= at_ms < grant["expires_at"])


def burn_order(grants: Mapping[str, GrantState]) -> list[str]:
    """Soonest-expiring first, then higher priority, then oldest; the id makes the order total."""
    return sorted(
        grants,
        key=lambda gid: (grants[gid]["expires_at"], -grants[gid]["priority"], grants[gid]["granted_at"], gid),
    )


def debit(
    grants: Mapping[str, GrantState],
    spent: MutableMapping[str, int],
    charged_micro: int,
    at_ms: int,
) -> tuple[list[Debit], int]:
    """Take ``charged_micro`` from the account's grants; returns the debits and what the grants
    could not cover (funded by the subscription). Updates ``spent`` in place."""
    if charged_micro <= 0 or not grants:
        return [], charged_micro
    remaining = charged_micro
    debits: list[Debit] = []
    for gid in burn_order(grants) if len(grants) > 1 else list(grants):
        grant = grants[gid]
        if not covers(grant, at_ms):
            continue
        balance = grant["amount"] - spent.get(gid, 0)
        if balance <= 0:
            continue
        take = balance if balance < remaining else remaining
        spent[gid] = spent.get(gid, 0) + take
        debits.append(Debit(gid, grant["campaign"], take, balance - take))
        remaining -= take
        if remaining == 0:
            break
    return debits, remaining


def apply_grant_event(grants: dict[str, dict[str, Any]], event: Mapping[str, Any]) -> bool:
    """Fold a CreditGrant event (ISSUED / REVOKED) into an account's grant state. Idempotent: the
    same event applied twice leaves the same state. Returns whether anything changed."""
    gid = event["grant_id"]
    if event["event_type"] == "ISSUED":
        new = {
            "amount": int(event["amount_micro"]),
            "campaign": event["campaign"],
            "granted_at": _ms(event["granted_at"]),
            "expires_at": _ms(event["expires_at"]),
            "priority": int(event.get("priority") or 0),
            "revoked_at": grants.get(gid, {}).get("revoked_at"),
        }
        if grants.get(gid) == new:
            return False
        grants[gid] = new
        return True
    if event["event_type"] == "REVOKED":
        at = _ms(event["occurred_at"])
        current = grants.get(gid)
        if current is None:
            # A revocation may overtake its issue across partitions' retries; remember it so the
            # later issue arrives already revoked.
            grants[gid] = {"amount": 0, "campaign": event.get("campaign") or "", "granted_at": 0,
                           "expires_at": 0, "priority": 0, "revoked_at": at}
            return True
        if current.get("revoked_at") is not None and current["revoked_at"] <= at:
            return False
        current["revoked_at"] = at
        return True
    raise ValueError(f"unknown grant event_type {event['event_type']!r}")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _ms(value: Any) -> int:
    # fastavro may hand timestamp-millis back as aware datetimes; state keeps plain epoch millis,
    # converted with integer arithmetic so no float rounding creeps in.
    if isinstance(value, int):
        return value
    return (value - _EPOCH) // _MS
