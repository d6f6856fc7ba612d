"""An account's usage state: what the processor remembers about an account's metering between
batches, one record per account in the ``<app>-account-usage`` changelog table. Pure, no I/O.

The meter (``streams/credits/meter.py``) and the balances (``streams/credits/balances.py``) read and
change it through ``AccountUsage``'s fields; ``USAGE_CODEC`` is how the changelog table
(``streams/runtime/changelog.py``) stores it. Every change a batch makes is written in that batch's
transaction, after its outputs are published (``streams/runtime/checkpoint.py``), so a replay after a
crash starts from exactly the state the last committed batch wrote.

Encoding: MessagePack, the fields as an array in declaration order (``array_like``), the event-id
ring as raw bytes. Measured against the JSON dicts with one-letter keys that earlier versions wrote
(figures in ``docs/performance.md``): smaller records, and faster to write and read. Evolution rules
of an array-like record: a new field goes last, with a default (a record written before it decodes
with the default); fields are never removed or reordered. A record with more fields than this
version knows (a later version's) is read, its extra fields ignored (and lost when this version
rewrites it).

Earlier versions wrote a JSON object with short keys (``{"p": 0, "o": 41, "spent": {...},
"ids": "<base64>", "sub": 7, "t": ms, "v": 3, "n": [...], "f": {"2": 17}}``, keys other than ``p``,
``o``, ``spent``, ``ids`` only once set). A changelog written by such a worker is still read:
``decode`` tells the two apart by the first byte (a JSON object starts with ``{``, this record with a
MessagePack array header) and converts the old keys (``_from_legacy``). Records are rewritten in the
new encoding the next time their account changes.

A worker of an earlier version cannot read the new encoding, and in a rolling upgrade partitions
move between old and new workers. So ``UsageCodec(legacy_writes=True)``
(``CREDITFLOW_USAGE_STATE_LEGACY_JSON``) writes the old JSON instead: the first roll runs with it,
a second roll without it (``docs/operations.md``). It does not make a rollback safe by itself: an
account not changed since it was set keeps its MessagePack record, which an old worker cannot read.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import msgspec
import orjson

__all__ = ["USAGE_CODEC", "AccountUsage", "UsageCodec", "copy_usage", "usage_codec"]


class AccountUsage(msgspec.Struct, array_like=True, gc=False):
    """One account's metering memory. Fields in stored order: append only (see the module doc).

    ``gc=False``: the record holds only ints, bytes, str-keyed dicts and lists of str, so it can never
    be part of a reference cycle; untracked, it is smaller and the collector never walks the hot set's
    values."""

    # Replay guard (``docs/exactly-once.md``): the input partition and offset of the last event
    # folded in. An event on that partition at or below ``applied_offset`` was already applied (its
    # outputs were published before the state that records it was committed) and is skipped.
    # -1/-1: nothing applied yet. Also the balance's ``source_offset``.
    input_partition: int = -1
    applied_offset: int = -1
    # Micro-credits debited from each of the account's grants so far, by grant id: a grant's
    # remaining amount is its amount minus this (the grants themselves are in the grants table).
    spent_by_grant: dict[str, int] = {}
    # Idempotency by event id: the ring of ids the account was metered for within the dedup window,
    # 12 bytes an id (``streams/credits/dedup.py``), so a client's resend is a DUPLICATE, not a debit.
    seen_event_ids: bytes = b""
    # Micro-credits charged that no grant covered (funded by the subscription), to date: the
    # balance's ``subscription_funded_micro``.
    subscription_funded_micro: int = 0
    # The latest event time (epoch ms) folded in, from interaction events and grant changes: the
    # balance's as-of time (which grants count as usable). Event time, not the clock, so a replay
    # computes the same balance; also how a replayed grant change is recognised (``batch_balances``).
    event_time_ms: int = 0
    # ``balance_seq`` of the latest balance published for the account: a replayed batch publishes
    # its balance under the same number, a new batch under the next.
    balance_seq: int = 0
    # Keys of the notifications already sent (``streams/credits/notifications.py``), sorted: never
    # derived again once recorded here.
    notifications_sent: list[str] = []
    # Forwarded records (``streams/runtime/repartition.py``): origin input partition -> highest
    # origin offset applied to this account, so a copy forwarded twice is applied once
    # (``streams/credits/meter.py`` ``first_forward``).
    forwarded_offsets: dict[int, int] = {}

    def copy(self) -> AccountUsage:
        """A copy a batch may change: its containers are new, so a batch that fails half-way never
        leaves a half-updated value in the table. ``seen_event_ids`` is immutable bytes (shared)."""
        return AccountUsage(self.input_partition, self.applied_offset, dict(self.spent_by_grant),
                            self.seen_event_ids, self.subscription_funded_micro, self.event_time_ms,
                            self.balance_seq, list(self.notifications_sent), dict(self.forwarded_offsets))


def copy_usage(state: AccountUsage | None) -> AccountUsage:
    """The batch's own copy of an account's state; a new state for an account never seen."""
    return AccountUsage() if state is None else state.copy()


# The keys earlier versions wrote, each with the field it became (``_from_legacy``).
LEGACY_KEYS: Mapping[str, str] = {
    "p": "input_partition", "o": "applied_offset", "spent": "spent_by_grant", "ids": "seen_event_ids",
    "sub": "subscription_funded_micro", "t": "event_time_ms", "v": "balance_seq", "n": "notifications_sent",
    "f": "forwarded_offsets",
}


def _to_legacy(state: AccountUsage) -> dict[str, Any]:
    """The JSON object earlier versions wrote for ``state`` (they read every key they know)."""
    return {"p": state.input_partition, "o": state.applied_offset, "spent": state.spent_by_grant,
            "ids": base64.b64encode(state.seen_event_ids).decode(), "sub": state.subscription_funded_micro,
            "t": state.event_time_ms, "v": state.balance_seq, "n": state.notifications_sent,
            "f": {str(p): o for p, o in state.forwarded_offsets.items()}}


def _from_legacy(old: Mapping[str, Any]) -> AccountUsage:
    """A state written as a JSON object with short keys (before ``AccountUsage``)."""
    ids = old.get("ids")
    return AccountUsage(
        input_partition=int(old.get("p", -1)),
        applied_offset=int(old.get("o", -1)),
        spent_by_grant={gid: int(v) for gid, v in (old.get("spent") or {}).items()},
        seen_event_ids=base64.b64decode(ids) if ids else b"",
        subscription_funded_micro=int(old.get("sub", 0)),
        event_time_ms=int(old.get("t", 0)),
        balance_seq=int(old.get("v", 0)),
        notifications_sent=list(old.get("n") or ()),
        forwarded_offsets={int(p): int(o) for p, o in (old.get("f") or {}).items()},
    )


_JSON_OBJECT = ord("{")


class UsageCodec:
    """How the changelog table stores ``AccountUsage`` (the table's ``codec``). Reads both encodings;
    writes MessagePack, or the earlier versions' JSON with ``legacy_writes`` (a rolling upgrade)."""

    def __init__(self, *, legacy_writes: bool = False) -> None:
        self.legacy_writes = legacy_writes
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(AccountUsage)

    def encode(self, value: AccountUsage) -> bytes:
        if self.legacy_writes:
            return orjson.dumps(_to_legacy(value))
        return self._encoder.encode(value)

    def decode(self, payload: bytes | memoryview) -> AccountUsage:
        if payload[0] == _JSON_OBJECT:  # written by an earlier version (see the module doc)
            # orjson reads an integer beyond 64 bits as a float; every number here is an offset,
            # epoch ms or micro-credit amount, well inside 64 bits.
            return _from_legacy(orjson.loads(payload))
        return self._decoder.decode(payload)


USAGE_CODEC = UsageCodec()
LEGACY_WRITING_USAGE_CODEC = UsageCodec(legacy_writes=True)


def usage_codec(legacy_writes: bool) -> UsageCodec:
    return LEGACY_WRITING_USAGE_CODEC if legacy_writes else USAGE_CODEC
