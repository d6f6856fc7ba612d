"""Event-time order for the fingerprint rules, whatever order the input partitions are read in.

One fingerprint's observations come from every input partition ("source"): a device shared by
accounts on partitions 0 and 4 hears from both. Read as a backlog, one source runs ahead of another
by however much its fetches did; sent paced, they arrive as they happen. Folded on arrival, the same
traffic would give a fingerprint a different sequence of observations each way, and so different
evaluations and alerts. So a fingerprint partition holds each observation back until every source
has moved past its event time, and releases what it holds in one order: ``(order time, source,
source offset)``. This is the watermark of stream processors (Flink, Kafka Streams' stream time),
kept per fingerprint partition:

- a source's *clock* is the latest event time it has sent here, by an observation or by a clock
  message its owner publishes after each batch (``Detection.on_metered``);
- an observation's *order time* is its event time raised to its source's clock: a source's
  observations keep their offset order (the replay guard needs that), and an event late within its
  own partition is ordered as of the time it arrived;
- the *frontier* is the earliest clock among the sources still active. A source nobody has heard
  from yet holds everything back; a source whose owner saw no event for a whole timer tick is
  declared idle and stops holding anything back until it sends again (an empty or quiet partition
  must not stall the rules). With every source idle everything held is released.

So backlog and paced traffic give the same fold sequence per fingerprint, provided each partition
carries its events in event-time order (what producers that stamp events as they send give); an
event later than the frontier, from a source that was idle, is folded at once, out of order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The frontier when every source is idle: later than any event time.
ALL_RELEASED = 1 << 62


@dataclass
class SourceClocks:
    """The clocks of every source, as one fingerprint partition has heard them. Pure."""

    sources: int
    time: dict[int, int] = field(default_factory=dict)
    idle: set[int] = field(default_factory=set)

    def order_time(self, source: int, event_time: int) -> int:
        """An observation from ``source`` arrived: its order time; the source is active again."""
        t = max(event_time, self.time.get(source, event_time))
        self.time[source] = t
        self.idle.discard(source)
        return t

    def advance(self, source: int, clock: int) -> bool:
        """``source`` reached ``clock`` (its owner's message). Returns whether anything changed."""
        changed = source in self.idle or clock > self.time.get(source, clock - 1)
        if clock > self.time.get(source, clock - 1):
            self.time[source] = clock
        self.idle.discard(source)
        return changed

    def set_idle(self, source: int) -> bool:
        if source in self.idle:
            return False
        self.idle.add(source)
        return True

    def frontier(self) -> int | None:
        """Observations with an order time at or before this may be folded; None: none may."""
        earliest: int | None = None
        for source in range(self.sources):
            if source in self.idle:
                continue
            t = self.time.get(source)
            if t is None:
                return None  # not heard from yet: anything it sends may be older
            earliest = t if earliest is None else min(earliest, t)
        return ALL_RELEASED if earliest is None else earliest

    def to_json(self) -> dict[str, Any]:
        return {"time": {str(s): t for s, t in self.time.items()}, "idle": sorted(self.idle)}

    @classmethod
    def from_json(cls, sources: int, raw: Mapping[str, Any] | None) -> SourceClocks:
        if not raw:
            return cls(sources)
        return cls(sources, {int(s): int(t) for s, t in raw.get("time", {}).items()},
                   {int(s) for s in raw.get("idle", ())})


def clock_message(source: int, clock: int | None) -> dict[str, Any]:
    """What a source's owner tells a fingerprint partition after a batch (``clock``) or a quiet tick
    (None: idle)."""
    return {"source": source, "idle": True} if clock is None else {"source": source, "time": clock}


def apply_clock_message(clocks: SourceClocks, message: Mapping[str, Any]) -> bool:
    if message.get("idle"):
        return clocks.set_idle(int(message["source"]))
    return clocks.advance(int(message["source"]), int(message["time"]))


def insert_held(held: list[list[Any]], entry: list[Any]) -> int:
    """Insert ``[order time, source, offset, observation]`` keeping ``held`` in release order (a
    fingerprint holds a few observations at a time: a linear scan from the end is enough); returns
    where it went."""
    key = entry[:3]
    i = len(held)
    while i and held[i - 1][:3] > key:
        i -= 1
    held.insert(i, entry)
    return i

