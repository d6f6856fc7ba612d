"""Credit notifications (credit-notifications): which thresholds a new balance crossed. Pure.

Each notification exists once per grant and threshold. The keys of those already sent live in the
account's usage state (``AccountUsage.notifications_sent``, see ``streams/credits/balances.py``),
written after the notification is
published: a batch replayed after a crash re-derives the same notifications with the same ids (the
sink keeps one), and once the state is written they are never derived again.

Keys: ``<grant>:<pct>`` a usage threshold, ``<grant>:100`` the grant exhausted, ``<grant>:exp`` its
expiry warning, ``low#<n>`` the n-th fall of the account's usable balance below the floor, and
``hi``: the balance has been at or above the floor since the last fall, so the next fall below it is
announced (a new grant re-arms the warning).

A policy may change its thresholds between runs. A threshold it adds below one the grant has already
announced (or below its exhaustion) is history and is not announced: a consumer would otherwise read
"25% used" after "exhausted". One above the highest announced is announced once crossed, as always.
Under one policy this changes nothing: the thresholds a balance crosses are announced together, so
none below an announced one is ever left unannounced.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.contracts import CreditBalance, CreditNotification, NotificationKind
from streams.credits.policy import CompiledPolicy

ABOVE_FLOOR = "hi"
LOW_PREFIX = "low#"
EXHAUSTED_PCT = 100


def notification_id(account: str, kind: NotificationKind, subject: str) -> str:
    """Stable across replays: derived from what the notification is about, never from the clock."""
    return f"{account}/{kind}/{subject}"


def highest_announced(sent: Sequence[str]) -> dict[str, int]:
    """Grant -> the highest use threshold (100: exhaustion) among the keys ``sent``. A key is
    ``<grant>:<pct>``; the grant id may hold ':' itself, the percentage never does."""
    out: dict[str, int] = {}
    for key in sent:
        gid, sep, pct = key.rpartition(":")
        if sep and pct.isdigit() and int(pct) > out.get(gid, 0):
            out[gid] = int(pct)
    return out


def notifications_for(policy: CompiledPolicy, balance: CreditBalance, sent: Sequence[str],
                      now_ms: int) -> tuple[list[CreditNotification], list[str]]:
    """Notifications ``balance`` raises given the keys already ``sent``; returns them and the keys
    sent afterwards (sorted, so equal memories serialise equally)."""
    done = set(sent)
    out: list[CreditNotification] = []
    account = balance["account_id"]
    total = balance["total_remaining_micro"]
    at = balance["event_time"]

    def emit(kind: NotificationKind, key: str, subject: str, **extra: object) -> None:
        done.add(key)
        note: CreditNotification = {
            "notification_id": notification_id(account, kind, subject), "account_id": account, "kind": kind,
            "grant_id": None, "campaign": None, "threshold_pct": None, "grant_remaining_micro": 0,
            "total_remaining_micro": total, "floor_micro": floor, "expires_at": None,
            "balance_seq": balance["balance_seq"], "policy_version": balance["policy_version"],
            "event_time": at, "created_at": now_ms,
        }
        note.update(extra)  # type: ignore[typeddict-item]  # keys of the record only, by the callers
        out.append(note)

    floor = policy.low_balance_floor_micro
    passed: dict[str, int] | None = None  # grant -> highest threshold announced before this balance
    for g in balance["grants"]:
        gid, amount, spent = g["grant_id"], g["amount_micro"], g["spent_micro"]
        if amount <= 0:
            continue
        about = {"grant_id": gid, "campaign": g["campaign"], "grant_remaining_micro": g["remaining_micro"]}
        for pct in policy.usage_thresholds_pct:
            key = f"{gid}:{pct}"
            if key not in done and spent * 100 >= amount * pct:
                if passed is None:
                    passed = highest_announced(sent)
                if pct > passed.get(gid, 0):
                    emit("USAGE_THRESHOLD", key, f"{gid}/{pct}", threshold_pct=pct, **about)
                else:
                    done.add(key)  # history: remembered as handled, so it is not judged again
        key = f"{gid}:{EXHAUSTED_PCT}"
        if key not in done and spent >= amount:
            emit("GRANT_EXHAUSTED", key, gid, threshold_pct=EXHAUSTED_PCT, **about)
        key = f"{gid}:exp"
        if (key not in done and g["status"] == "ACTIVE"
                and g["expires_at"] - at <= policy.expiry_warning_ms):
            emit("GRANT_EXPIRING", key, gid, expires_at=g["expires_at"], **about)

    if total >= floor:
        done.add(ABOVE_FLOOR)
    elif ABOVE_FLOOR in done:
        # Numbered falls: a replay whose batches end elsewhere still numbers the same fall the same.
        fall = 1 + sum(1 for k in done if k.startswith(LOW_PREFIX))
        emit("LOW_BALANCE", f"{LOW_PREFIX}{fall}", str(fall))
        done.discard(ABOVE_FLOOR)
    # Most balances change nothing here: hand the same memory back, unsorted work skipped.
    return out, (list(sent) if done == set(sent) else sorted(done))
