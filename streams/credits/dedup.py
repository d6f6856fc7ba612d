"""Idempotency by event id: which event ids an account has already been metered for. Pure, no I/O.

A platform service that times out and retries sends the same ``event_id`` again, at another offset,
so the offset replay guard (``streams/runtime/checkpoint.py``) does not see it. Each account's usage
state therefore keeps a *ring* of the ids it was metered for (``AccountUsage.seen_event_ids``,
``streams/credits/account_state.py``): a 64-bit hash of the id and the event time in whole seconds,
12 bytes per id, oldest first, stored as raw bytes beside the offsets in the same changelog record,
so it survives crashes exactly as the debits do and is written in the same transaction.

The ring is bounded twice:
- by event time: ids whose event happened more than ``window`` before the account's newest metered
  event are dropped (event time, not the clock, so a replay reaches the same answer);
- by count: at most ``max_ids`` per account; an account metered more often than that within the
  window forgets its oldest ids first (a resend older than that is metered again).

A hash collision (two ids with one 64-bit hash in one account's window) would drop an event as a
duplicate: with 10,000 ids in a window that is a chance of about 3e-12.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

_ENTRY = struct.Struct("<QI")  # id hash, event time (epoch seconds)
ENTRY_BYTES = _ENTRY.size


def id_hash(event_id: str) -> bytes:
    """The 8 bytes an id is remembered by."""
    return hashlib.blake2b(event_id.encode(), digest_size=8).digest()


@dataclass(slots=True)
class SeenIds:
    """One account's ring while a batch works on it: ``raw`` is the entries back to back."""

    raw: bytearray
    newest_s: int

    @classmethod
    def load(cls, stored: bytes) -> SeenIds:
        if not stored:
            return cls(bytearray(), 0)
        raw = bytearray(stored)
        newest = max(t for _h, t in _ENTRY.iter_unpack(raw))
        return cls(raw, newest)

    def dump(self) -> bytes:
        return bytes(self.raw)

    def __contains__(self, digest: bytes) -> bool:
        raw, step = self.raw, ENTRY_BYTES
        at = raw.find(digest)
        while at >= 0:
            if at % step == 0:
                return True
            at = raw.find(digest, at + 1)
        return False

    def __len__(self) -> int:
        return len(self.raw) // ENTRY_BYTES

    def add(self, digest: bytes, occurred_ms: int, window_s: int, max_ids: int) -> None:
        """Remember ``digest``; forget what fell out of the window or beyond ``max_ids``."""
        at_s = occurred_ms // 1000
        if at_s > self.newest_s:
            self.newest_s = at_s
        self.raw += digest + struct.pack("<I", max(at_s, 0) & 0xFFFFFFFF)
        horizon = self.newest_s - window_s
        raw, step = self.raw, ENTRY_BYTES
        drop = max(0, len(raw) // step - max_ids)
        # Entries are in metering order, which is event order give or take producers' retries: an
        # entry inside the window stops the scan, so an out-of-order one behind it stays a little longer.
        while drop * step < len(raw) and _ENTRY.unpack_from(raw, drop * step)[1] < horizon:
            drop += 1
        if drop:
            del raw[: drop * step]
