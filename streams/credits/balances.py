"""An account's credit balance as platform services read it (credit-balances, the balance lookup):
pure functions of the processor's per-account state, no I/O.

A balance reads the account's usage state (``AccountUsage``, ``streams/credits/account_state.py``):
besides the meter's ``input_partition``/``applied_offset``/``spent_by_grant``, it keeps for the balance

    subscription_funded_micro  micro-credits charged that no grant covered, to date
    event_time_ms              the latest event time folded in (interaction events and grant changes):
                               the balance's as-of time. Event time, not the clock, so a replay after
                               a crash computes the same balance
    balance_seq                balance_seq of the latest balance published for the account
    notifications_sent         notifications already sent (``streams/credits/notifications.py``)

The state is written after the balance and its notifications are published and acknowledged, so a
batch replayed after a crash starts from the same state: its balance takes the same sequence number
(with the replay's events, which may be more: the later record of a number is the newer), its
notifications the same ids; a batch whose state was written changes nothing and publishes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.contracts import CreditBalance, CreditNotification, GrantBalance, GrantStatus
from streams.credits.account_state import AccountUsage, copy_usage
from streams.credits.ledger import burn_order
from streams.credits.meter import epoch_ms
from streams.credits.notifications import notifications_for
from streams.credits.policy import CompiledPolicy

GrantsLookup = Callable[[str], Mapping[str, Any] | None]
UsageLookup = Callable[[str], AccountUsage | None]


def grant_status(grant: Mapping[str, Any], spent: int, at_ms: int) -> GrantStatus:
    """A grant's state at ``at_ms``; the checks follow ``ledger.covers`` (revocation, then validity)."""
    revoked_at = grant.get("revoked_at")
    if revoked_at is not None and at_ms >= revoked_at:
        return "REVOKED"
    if at_ms < grant["granted_at"]:
        return "NOT_STARTED"
    if at_ms >= grant["expires_at"]:
        return "EXPIRED"
    if grant["amount"] - spent <= 0:
        return "EXHAUSTED"
    return "ACTIVE"


def balance_record(account: str, grants: Mapping[str, Mapping[str, Any]] | None, usage: AccountUsage | None,
                   policy_version: str, partition: int, now_ms: int) -> CreditBalance:
    """The balance an account's state holds: what the processor publishes and the lookup answers."""
    grants = grants or {}
    spent: Mapping[str, int] = usage.spent_by_grant if usage else {}
    at = usage.event_time_ms if usage else 0
    rows: list[GrantBalance] = []
    total = used = 0
    for gid in burn_order(grants) if len(grants) > 1 else grants:
        g = grants[gid]
        s = spent.get(gid, 0)
        status = grant_status(g, s, at)
        remaining = g["amount"] - s
        if status == "ACTIVE":
            total += remaining
        used += s
        rows.append({"grant_id": gid, "campaign": g["campaign"], "amount_micro": g["amount"], "spent_micro": s,
                     "remaining_micro": remaining, "granted_at": g["granted_at"], "expires_at": g["expires_at"],
                     "revoked_at": g.get("revoked_at"), "status": status})
    return {
        "account_id": account,
        "balance_seq": usage.balance_seq if usage else 0,
        "total_remaining_micro": total,
        "grant_funded_micro": used,
        "subscription_funded_micro": usage.subscription_funded_micro if usage else 0,
        "grants": rows,
        "policy_version": policy_version,
        "source_partition": partition,
        "source_offset": usage.applied_offset if usage else -1,
        "event_time": at,
        "updated_at": now_ms,
    }


@dataclass
class BalanceBatch:
    """A batch's balances and notifications, and the usage states that remember them."""

    balances: list[tuple[int, CreditBalance]] = field(default_factory=list)
    notifications: list[tuple[int, CreditNotification]] = field(default_factory=list)
    # Usage states written for the balances' sake only (accounts whose grants alone changed).
    usage_updates: dict[str, tuple[int, AccountUsage]] = field(default_factory=dict)


def batch_balances(policy: CompiledPolicy, grant_updates: Mapping[str, tuple[int, Mapping[str, Any]]],
                   accepted_grants: Iterable[tuple[int, Mapping[str, Any]]],
                   usage_updates: Mapping[str, tuple[int, AccountUsage]],
                   usage: UsageLookup, grants: GrantsLookup, now_ms: int) -> BalanceBatch:
    """One balance per account whose grants or usage changed in the batch, and the notifications it
    raises. Updates the pending usage states of ``usage_updates`` in place (they are the batch's own
    copies); accounts with grant changes only get a copy of their usage state in the result."""
    out = BalanceBatch()
    grant_times: dict[str, tuple[int, int]] = {}
    for partition, g in accepted_grants:
        account = g["account_id"]
        at = epoch_ms(g["occurred_at"])
        if at > grant_times.get(account, (0, 0))[1]:
            grant_times[account] = (partition, at)
    for account, (partition, state) in usage_updates.items():
        _one(out, policy, account, partition, state, grants(account), grant_times.get(account, (0, 0))[1], now_ms)
    for account, (partition, at) in grant_times.items():
        if account in usage_updates:
            continue
        held = usage(account)
        # A grant event that changed nothing is a replay. Its balance was published already, unless
        # the crash came between the two state writes (grants durable, usage not): then the usage
        # state has not seen the grant's time yet, and the balance is derived again, the same one.
        if account not in grant_updates and held is not None and held.event_time_ms >= at:
            continue
        state = copy_usage(held)
        out.usage_updates[account] = (partition, state)
        _one(out, policy, account, partition, state, grants(account), at, now_ms)
    return out


def _one(out: BalanceBatch, policy: CompiledPolicy, account: str, partition: int, state: AccountUsage,
         account_grants: Mapping[str, Any] | None, grant_time: int, now_ms: int) -> None:
    if grant_time > state.event_time_ms:
        state.event_time_ms = grant_time
    state.balance_seq += 1
    record = balance_record(account, account_grants, state, policy.version, partition, now_ms)
    out.balances.append((partition, record))
    sent = state.notifications_sent
    notes, now_sent = notifications_for(policy, record, sent, now_ms)
    if now_sent != sent:
        state.notifications_sent = now_sent
    out.notifications.extend((partition, n) for n in notes)
