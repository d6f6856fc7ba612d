"""The meter: classify, price, debit grants and tag priority for a batch of raw input records.

Pure apart from reading state through the lookups it is given: the processor does the I/O.
Two guards live here (``streams/runtime/checkpoint.py`` lists every guard and why each holds):
- replays: each account's usage state (``AccountUsage``, ``streams/credits/account_state.py``)
  remembers the input partition and offset of the last event folded into it (``input_partition``,
  ``applied_offset``); an event at or below that offset was already applied (its outputs were
  acknowledged before the transaction that wrote the state committed), so it is skipped, not
  debited twice;
- resends: the state also remembers the event ids it was metered for (``seen_event_ids``,
  ``streams/credits/dedup.py``); an id seen again within the window is dead-lettered as DUPLICATE,
  not metered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from streams.credits.account_state import AccountUsage, copy_usage
from streams.credits.dedup import SeenIds, id_hash
from streams.credits.ledger import apply_grant_event, debit
from streams.credits.policy import CompiledPolicy, price_event, should_sample
from streams.wire.codec import DecodeError, Decoder
from streams.wire.dead_letters import build_dead_letter
from streams.wire.headers import forwarded_from
from streams.wire.models import DeadLetter
from streams.wire.validation import decoded_event_passes, validate_event, validate_grant

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(value: Any) -> int:
    if isinstance(value, int):
        return value
    return (value - _EPOCH) // _MS


class InputRecord(Protocol):
    """What the meter reads of a Kafka record: aiokafka's ConsumerRecord has it, so does RawRecord."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(slots=True)
class RawRecord:
    """One Kafka record as the agent saw it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass
class MeterResult:
    enriched: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    usage_updates: dict[str, tuple[int, AccountUsage]] = field(default_factory=dict)
    grant_updates: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    # Decoded, valid grant events with their partition, in input order (detection reads them too).
    accepted_grants: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    skipped_replays: int = 0
    # Valid records on a partition that does not own their account, with the account: forwarded to
    # the owner (``streams/runtime/repartition.py``), never applied here.
    forward: list[tuple[InputRecord, str]] = field(default_factory=list)
    # Copies of a forwarded record this account has already applied (a forwarder's batch replayed).
    skipped_forwards: int = 0
    # Events whose event_id the account was already metered for (dead-lettered as DUPLICATE).
    duplicates: int = 0
    # Events metered at the policy's '*' fallback price because their model is not in the price
    # table, by model: counted so an unpriced model is seen, not silently priced.
    unpriced: dict[str, int] = field(default_factory=dict)


UsageLookup = Callable[[str], AccountUsage | None]
GrantsLookup = Callable[[str], Mapping[str, Any] | None]
# The partition that owns an account on the input topic (murmur2 of the account id).
OwnerLookup = Callable[[str], int]


@dataclass(frozen=True, slots=True)
class DedupWindow:
    """How long, and how many, event ids an account remembers (see ``streams/credits/dedup.py``)."""

    seconds: int = 7 * 24 * 3600
    max_ids: int = 10_000


class Meter:
    def __init__(self, policy: CompiledPolicy, event_decoder: Decoder, grant_decoder: Decoder,
                 dedup: DedupWindow = DedupWindow()) -> None:
        self.policy = policy
        self.event_decoder = event_decoder
        self.grant_decoder = grant_decoder
        self.dedup = dedup
        # Set once the input topics' partition counts are known; None meters every record in place.
        self.event_owner: OwnerLookup | None = None
        self.grant_owner: OwnerLookup | None = None

    def _dead(self, out: MeterResult, rec: InputRecord, kind: str, message: str, now_ms: int) -> None:
        out.dead_letters.append(
            build_dead_letter(rec.topic, rec.partition, rec.offset, rec.key, rec.value,
                              list(rec.headers or ()), kind, message, now_ms)
        )

    def grants(self, records: Sequence[InputRecord], lookup: GrantsLookup, now_ms: int) -> MeterResult:
        """Fold CreditGrant events into per-account grant state (idempotent per event)."""
        out = MeterResult()
        for rec in records:
            try:
                g = self.grant_decoder.decode(rec.value or b"")
            except DecodeError as exc:
                self._dead(out, rec, exc.kind, exc.message, now_ms)
                continue
            reason = validate_grant(g, now_ms)
            if reason:
                self._dead(out, rec, "VALIDATION", reason, now_ms)
                continue
            account = g["account_id"]
            if self.grant_owner is not None and self.grant_owner(account) != rec.partition:
                out.forward.append((rec, account))
                continue
            out.accepted_grants.append((rec.partition, g))
            pending = out.grant_updates.get(account)
            state = pending[1] if pending else _copy_grants(lookup(account))
            if apply_grant_event(state, g):
                out.grant_updates[account] = (rec.partition, state)
        return out

    def meter(self, records: Sequence[InputRecord], usage: UsageLookup, grants: GrantsLookup,
              now_ms: int) -> MeterResult:
        out = MeterResult()
        policy = self.policy
        decode = self.event_decoder.decode
        updates = out.usage_updates
        owner = self.event_owner
        seen: dict[str, SeenIds] = {}
        window_s, max_ids = self.dedup.seconds, self.dedup.max_ids
        prices = policy.prices
        for rec in records:
            try:
                ev = decode(rec.value or b"")  # a tombstone is dead-lettered as empty
            except DecodeError as exc:
                self._dead(out, rec, exc.kind, exc.message, now_ms)
                continue
            reason = None if decoded_event_passes(ev, now_ms) else validate_event(ev, now_ms)
            if reason:
                self._dead(out, rec, "VALIDATION", reason, now_ms)
                continue
            price = policy.price_for(ev["model"])
            if price is None:
                self._dead(out, rec, "VALIDATION", f"model: no list price for {ev['model']!r} in policy "
                           f"{policy.version} and no '*' fallback", now_ms)
                continue
            account = ev["account_id"]
            if owner is not None and owner(account) != rec.partition:
                out.forward.append((rec, account))
                continue
            pending = updates.get(account)
            state = copy_usage(usage(account)) if pending is None else pending[1]
            if state.input_partition == rec.partition and rec.offset <= state.applied_offset:
                out.skipped_replays += 1
                continue
            if rec.headers and not first_forward(state, rec.headers):
                out.skipped_forwards += 1
                continue
            occurred = epoch_ms(ev["occurred_at"])
            ids = seen.get(account)
            if ids is None:
                ids = seen[account] = SeenIds.load(state.seen_event_ids)
            digest = id_hash(ev["event_id"])
            if digest in ids:
                # A client's resend: kept visible, never debited again. The offset advances so a
                # replay of this batch skips it like any other applied record.
                out.duplicates += 1
                self._dead(out, rec, "DUPLICATE", f"event_id {ev['event_id']!r} was already metered for "
                           f"account {account!r} within the last {window_s} s", now_ms)
                state.input_partition, state.applied_offset = rec.partition, rec.offset
                updates[account] = (rec.partition, state)
                continue
            ids.add(digest, occurred, window_s, max_ids)
            # Counted once metered: a replay or a resend is not another event on the model.
            if ev["model"] not in prices:
                out.unpriced[ev["model"]] = out.unpriced.get(ev["model"], 0) + 1

            cls, pr = price_event(policy, price, ev)
            category = cls.category
            account_grants = grants(account)
            debits, uncovered = (
                debit(account_grants, state.spent_by_grant, pr.charged_micro, occurred)
                if account_grants else ([], pr.charged_micro)
            )
            priority = policy.priority[category]
            sampled, sample_reason = should_sample(policy, ev["event_id"], priority, category, ev["outcome"])
            state.input_partition = rec.partition
            state.applied_offset = rec.offset
            if uncovered:
                state.subscription_funded_micro += uncovered
            if occurred > state.event_time_ms:
                state.event_time_ms = occurred
            updates[account] = (rec.partition, state)
            enriched = {
                "event_id": ev["event_id"],
                "occurred_at": occurred,
                "processed_at": now_ms,
                "account_id": account,
                "team_id": ev.get("team_id"),
                "org_id": ev.get("org_id"),
                "plan": ev["plan"],
                "model": ev["model"],
                "surface": ev["surface"],
                "session_id": ev["session_id"],
                "outcome": ev["outcome"],
                "error_code": ev.get("error_code"),
                "input_tokens": ev["input_tokens"],
                "output_tokens": ev["output_tokens"],
                "cached_tokens": ev.get("cached_tokens", 0),
                "thinking_tokens": ev["thinking_tokens"],
                "context_window_tokens": ev["context_window_tokens"],
                "reasoning_steps": ev["reasoning_steps"],
                "tool_calls": ev["tool_calls"],
                "latency_ms": ev["latency_ms"],
                "category": category,
                "is_extended_context": cls.is_extended_context,
                "is_complex_reasoning": cls.is_complex_reasoning,
                "is_tool_use": cls.is_tool_use,
                "multiplier": policy.multiplier_text[category],
                "priority": priority,
                "list_micro": pr.list_micro,
                "charged_micro": pr.charged_micro,
                "subsidy_micro": pr.subsidy_micro,
                "grant_funded_micro": pr.charged_micro - uncovered,
                "subscription_funded_micro": uncovered,
                "debits": [
                    {"grant_id": d.grant_id, "campaign": d.campaign, "amount_micro": d.amount_micro,
                     "balance_after_micro": d.balance_after_micro}
                    for d in debits
                ],
                "sampled": sampled,
                "policy_version": policy.version,
                "source_partition": rec.partition,
                "source_offset": rec.offset,
                "ip_hash": ev.get("ip_hash"),
                "device_hash": ev.get("device_hash"),
                "payment_hash": ev.get("payment_hash"),
                "prompt_fingerprint": ev.get("prompt_fingerprint"),
                "context_uniqueness": ev.get("context_uniqueness"),
            }
            out.enriched.append(enriched)
            if sampled:
                out.samples.append(_sample(enriched, ev, sample_reason))
        for account, ids in seen.items():
            pending = updates.get(account)
            if pending is not None:
                pending[1].seen_event_ids = ids.dump()
        return out


def first_forward(state: AccountUsage, headers: Sequence[tuple[str, bytes]]) -> bool:
    """False for a copy of a forwarded record the account has applied already, else True (and the
    record's origin is remembered in ``state``).

    Forwards from one origin partition reach the owner in origin-offset order: a forwarder sends
    them in order and commits the origin only once they are acknowledged, so a replay re-sends a
    suffix, and a stalled forwarder's late copies are of offsets its successor sends too. Hence a
    copy at or below the highest origin offset applied for that origin partition is a duplicate.
    The mark lives in the account's own state, written atomically with its debits."""
    origin = forwarded_from(headers)
    if origin is None:
        return True
    partition, offset = origin
    seen = state.forwarded_offsets
    if offset <= seen.get(partition, -1):
        return False
    seen[partition] = offset
    return True


def _copy_grants(state: Mapping[str, Any] | None) -> dict[str, Any]:
    if not state:
        return {}
    return {gid: dict(g) for gid, g in state.items()}


def _sample(enriched: Mapping[str, Any], ev: Mapping[str, Any], reason: str) -> dict[str, Any]:
    return {
        "event_id": enriched["event_id"],
        "account_id": enriched["account_id"],
        "occurred_at": enriched["occurred_at"],
        "model": enriched["model"],
        "category": enriched["category"],
        "priority": enriched["priority"],
        "outcome": enriched["outcome"],
        "error_code": enriched["error_code"],
        "reason": reason,
        "input_tokens": enriched["input_tokens"],
        "output_tokens": enriched["output_tokens"],
        "cached_tokens": enriched["cached_tokens"],
        "thinking_tokens": enriched["thinking_tokens"],
        "context_window_tokens": enriched["context_window_tokens"],
        "reasoning_steps": enriched["reasoning_steps"],
        "tool_calls": enriched["tool_calls"],
        # For the refinement team's integration pain points (RefinementSample v3).
        "surface": ev.get("surface") or "",
        "tool_names": list(ev.get("tool_names") or ()),
        "latency_ms": int(ev.get("latency_ms") or 0),
        "policy_version": enriched["policy_version"],
        "prompt_fingerprint": ev.get("prompt_fingerprint"),
    }
