"""The sink's store planning: which buffered records go to ClickHouse together, under which
deduplication tokens, with which plan rows and offset commits. Pure: no Kafka, no ClickHouse.

Terms
-----
A *batch* is one partition's buffered records from ``start`` to ``end`` (Kafka offsets). A *store*
is one or more batches of different partitions inserted together: per table one insert whose
``insert_deduplication_token`` is ``<group>:store:<store id>:<table>`` (a combined store, chDB's
single sink) or ``<group>:<topic>:<partition>:<start>-<end>:<table>`` (a batch stored on its own).
Before any insert of a store, every batch of it is *recorded* in ``sink_batches`` (start, end,
replay guard before and after it, store id). Only after every insert of the store has returned is
``end + 1`` committed, for each of its partitions at once.

The invariant
-------------
For every partition P of the sink's group, with ``c`` its committed offset:

1. *Records only reach ClickHouse inside a recorded store.* Plans are inserted before rows, and a
   store's rows are a pure function of its batches' records and each batch's recorded
   ``guard_before`` (the source_offset guard drops usage-enriched records at or below it). So
   inserting a recorded store again, by anyone, sends the same blocks under the same tokens and
   ClickHouse keeps them once (tables and dependent materialized views deduplicate by token).
2. *The recorded batches of P at or after c form a chain*: ordered, contiguous, each naming its
   store. Stores run one after the other and a store is planned only after the previous one
   completed or its member was re-armed, so a later store never lands before an earlier one of the
   same partition. A batch starts where the previous one ended (or at ``c``), not at its first
   record: transaction markers and aborted records take offsets no consumer is handed, and a batch
   starting after one would not meet ``c`` (a replay would give the chain up).
3. *A replay re-forms the chain exactly.* A re-armed partition first re-stores each chained batch
   as its recorded store: the same members, the same ``start``/``end``, the same ``guard_before``,
   hence the same token; it waits until every member has read up to its end. Records after the
   chain form new stores with the guard of the chain's last ``guard_after``. Whatever boundaries the
   consumer's fetches happen to form, the planner cuts the records at the recorded ends, so a
   replay never mints a new token for a range that may already have landed.
4. *A store committed for any member landed in full* (the commit follows all of its inserts).
   Such a store, and every store chained before it, is skipped, not re-formed: its records are
   dropped by offset and the guard continues from its ``guard_after``. The same holds when a
   partition's records resume beyond a chained batch (only a commit past it can move the fetch
   position there).
5. *Idle partitions commit past transaction markers.* A transactional producer upstream (a
   dead-letter replay) leaves a marker after its records; the consumer's position passes it, but no
   record carries its offset, so a partition ending in one would keep a lag of one until its next
   record. When a partition of this epoch has nothing buffered and no chain, everything below its
   position is stored or is markers and aborted records (the only offsets a read_committed
   consumer passes without handing them over), so its position is committed
   (``StorePlanner.idle_commits``). A record fetched but not buffered never leaves the position
   past it: the schema gate and an unarmed partition seek back to it, and a fetch made stale by a
   rebalance belongs to an older epoch.
6. *Fencing.* Every arming and revocation starts a new epoch; a store remembers the epoch it was
   planned in, and the service neither inserts (checked before each insert) nor commits for a
   store of an older epoch, and ``stored`` ignores it. The revoked partitions' buffers are dropped:
   their next owner (perhaps this sink again) re-reads them from the committed offset and, by 3,
   re-forms whatever the stale store recorded.

Why it cannot break: a range of P that may have landed is always covered by a recorded plan at or
after ``c`` (1), the only ways to store it again are its recorded store (3, same token, so at most
once) or nothing (4, only when a commit proves it landed), and a member that lost P cannot add a
plan or a commit behind the new owner's back without passing the fence (5). The one exception is
a recorded store that cannot be re-formed because a member partition is no longer assigned to this
sink (offsets moved by hand, or a combined store of a chDB sink replayed by several server sinks):
its batches are then stored one by one (``split``), at least once, and counted in ``split_stores``.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

TP = tuple[str, int]


class OffsetRecord(Protocol):
    @property
    def offset(self) -> int: ...


@dataclass(frozen=True)
class RecordedBatch:
    """One row of ``sink_batches``: a batch as it was planned."""

    topic: str
    partition: int
    start: int
    end: int
    guard_before: int
    guard_after: int
    store: str = ""
    # Marked after all its inserts returned while its commit was fenced.
    landed: bool = False

    @property
    def tp(self) -> TP:
        return (self.topic, self.partition)


def store_id(batches: Iterable[tuple[str, int, int, int]]) -> str:
    """Name of a store of (topic, partition, start, end) batches: the same batches, the same name,
    whatever order they were gathered in."""
    return hashlib.sha256(repr(sorted(batches)).encode()).hexdigest()[:24]


@dataclass
class PartitionState:
    """What the planner knows of one assigned partition."""

    tp: TP
    epoch: int
    # Offset of the next record this partition expects; anything below was buffered or stored.
    next_offset: int
    # Highest usage-enriched source_offset stored (the replay guard).
    guard: int
    # Recorded, not yet committed batches to re-store first, oldest first.
    chain: list[RecordedBatch] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)
    first_at: float = 0.0
    # Where the next batch starts: the end of the last one taken + 1 (markers included), or where
    # the partition was armed. -1: at its first record (a state made by hand, in a test).
    taken_to: int = -1
    # Highest offset known committed for it (at arming, then by this sink's commits).
    committed: int = -1


@dataclass(frozen=True)
class Piece:
    """One partition's batch within a store."""

    tp: TP
    records: Sequence[Any]
    start: int
    end: int
    guard_before: int
    # The recorded batch this piece re-stores, if it is a replay.
    recorded: RecordedBatch | None = None


@dataclass(frozen=True)
class Unit:
    """Pieces inserted together: one insert per table, under one token prefix."""

    token_prefix: str
    pieces: tuple[Piece, ...]

    def token(self, table: str) -> str:
        return f"{self.token_prefix}:{table}"


@dataclass(frozen=True)
class Store:
    epoch: int
    store: str  # the store id recorded with each batch; '' when each unit is one batch of its own
    units: tuple[Unit, ...]

    @property
    def pieces(self) -> list[Piece]:
        return [p for u in self.units for p in u.pieces]

    def plan_rows(self, group: str, guard_after: Mapping[TP, int], rows: Mapping[TP, int],
                  planned_at_ms: int, landed: bool = False) -> list[tuple[Any, ...]]:
        """``sink_batches`` rows (SINK_BATCHES_COLUMNS order), given what building the rows found;
        ``landed`` marks a store stored in full whose commit was fenced."""
        return [(group, p.tp[0], p.tp[1], p.start, p.end, p.guard_before, guard_after[p.tp], rows[p.tp],
                 planned_at_ms, self.store, landed) for p in self.pieces]

    def commits(self) -> dict[TP, int]:
        """Offsets to commit once the store is in: the next offset of each partition."""
        return {p.tp: p.end + 1 for p in self.pieces}


def batch_prefix(group: str, tp: TP, start: int, end: int) -> str:
    return f"{group}:{tp[0]}:{tp[1]}:{start}-{end}"


def arm_partition(tp: TP, epoch: int, committed: int, before: RecordedBatch | None,
                  pending: Sequence[RecordedBatch], landed: set[str]) -> tuple[PartitionState, bool]:
    """The state of a newly assigned partition from its committed offset, the last recorded batch
    ending before it (``before``) and the recorded batches ending at or after it (``pending``).
    Returns the state and whether the recorded chain had to be given up (it does not start at the
    committed offset: offsets moved by hand)."""
    state = PartitionState(tp, epoch, committed, before.guard_after if before is not None else -1,
                           committed=committed)
    chain = sorted(pending, key=lambda b: b.start)
    # 4: a landed batch proves every batch chained before it landed too.
    last_landed = max((i for i, b in enumerate(chain) if b.landed or (b.store and b.store in landed)),
                      default=-1)
    for b in chain[: last_landed + 1]:
        state.next_offset, state.guard = b.end + 1, b.guard_after
    chain = chain[last_landed + 1:]
    broken = bool(chain) and (chain[0].start != state.next_offset or any(
        nxt.start <= cur.end for cur, nxt in itertools.pairwise(chain)))
    state.chain = [] if broken else chain
    state.taken_to = state.next_offset
    return state, broken


class StorePlanner:
    """The sink's buffers and the decisions over them. The service feeds it what Kafka and
    ClickHouse said (assignments, committed offsets, recorded plans, fetched records) and executes
    the stores it returns."""

    def __init__(self, group: str, combine: bool, batch_rows: int, flush_seconds: float) -> None:
        self.group = group
        # One insert per table for every due partition (chDB's single sink); otherwise every
        # partition batch is a store of its own, so sinks sharing partitions can re-form them.
        self.combine = combine
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self.epoch = 0
        self.parts: dict[TP, PartitionState] = {}
        self.assigned: set[TP] = set()
        # Recorded stores met in chains: store -> its batches, per partition.
        self.stores: dict[str, dict[TP, RecordedBatch]] = {}
        self.landed: set[str] = set()
        # Recorded stores that could not be re-formed; their batches go one by one.
        self.split: set[str] = set()
        self.split_stores = 0
        self.stale_records = 0
        # Offsets to commit with no store: partitions whose landed batches were skipped (an idle
        # partition would otherwise keep its lag until its next store).
        self.skipped: dict[TP, int] = {}

    # -- what Kafka and ClickHouse said ------------------------------------------------------

    def revoke(self, tps: Iterable[TP]) -> None:
        """Partitions taken away: their buffers are dropped and in-flight stores are fenced."""
        self.epoch += 1
        self.skipped.clear()
        for tp in tps:
            self.assigned.discard(tp)
            self.parts.pop(tp, None)

    def assign(self, tps: Iterable[TP]) -> None:
        self.epoch += 1
        self.assigned.update(tps)

    def learn_stores(self, members: Mapping[str, Iterable[RecordedBatch]], committed: Mapping[TP, int]) -> None:
        """Recorded stores and their batches; ``committed`` holds the committed offset of every
        member partition known. A store committed past any member's batch landed."""
        for store, batches in members.items():
            by_tp = {b.tp: b for b in batches}
            self.stores[store] = by_tp
            if any(b.landed or committed.get(tp, -1) > b.end for tp, b in by_tp.items()):
                self.landed.add(store)

    def arm(self, tp: TP, committed: int, before: RecordedBatch | None,
            pending: Sequence[RecordedBatch]) -> bool:
        """Arm an assigned partition; False when its recorded chain was given up (see arm_partition)."""
        state, broken = arm_partition(tp, self.epoch, committed, before, pending, self.landed)
        self.parts[tp] = state
        if state.next_offset > committed:
            self.skipped[tp] = state.next_offset
        return not broken

    def committed_to(self, offsets: Mapping[TP, int]) -> None:
        """This sink committed ``offsets`` (for partitions still of this epoch)."""
        for tp, offset in offsets.items():
            part = self.parts.get(tp)
            if part is not None and part.epoch == self.epoch:
                part.committed = max(part.committed, offset)

    def idle_commits(self, positions: Mapping[TP, int]) -> dict[TP, int]:
        """Offsets to commit past trailing transaction markers (5): the consumer's ``positions`` of
        partitions of this epoch with nothing buffered, no chain, and a position beyond what is
        committed. Everything below such a position is stored, or is offsets no record has."""
        out: dict[TP, int] = {}
        for tp, position in positions.items():
            part = self.parts.get(tp)
            if (part is None or part.epoch != self.epoch or part.records or part.chain
                    or position < part.next_offset or position <= part.committed):
                continue
            out[tp] = position
            # The next batch starts here, where the commit leaves the committed offset (2).
            part.next_offset = part.taken_to = position
        return out

    def take_skipped(self) -> dict[TP, int]:
        """Commits owed for skipped landed batches, handed out once."""
        out, self.skipped = self.skipped, {}
        return out

    def unarmed(self) -> list[TP]:
        return sorted(tp for tp in self.assigned if tp not in self.parts)

    def add(self, tp: TP, records: Sequence[Any], now: float) -> bool:
        """Buffer fetched records; records below the expected offset (fetched before a rebalance,
        or fetched twice) are dropped. False when the partition is not armed."""
        part = self.parts.get(tp)
        if part is None:
            return False
        fresh = [r for r in records if r.offset >= part.next_offset]
        self.stale_records += len(records) - len(fresh)
        if fresh:
            if not part.records:
                part.first_at = now
            part.records.extend(fresh)
            part.next_offset = fresh[-1].offset + 1
        return True

    def buffered(self) -> int:
        return sum(len(p.records) for p in self.parts.values())

    # -- decisions ---------------------------------------------------------------------------

    def next_store(self, now: float, force: bool) -> Store | None:
        """The next store to execute, its records taken out of the buffers; None when nothing is due."""
        self._skip_landed()
        replay = self._replay(now)
        if replay is not None:
            return replay
        normal = [p for p in self.parts.values() if p.records and not p.chain]
        if not normal:
            return None
        rows = sum(len(p.records) for p in normal)
        # When one partition is due every partition with rows goes too: a store's cost is mostly
        # per insert (parts, views), so partitions that come due a moment apart share one.
        if not (force or rows >= self.batch_rows or any(now - p.first_at >= self.flush_seconds for p in normal)):
            return None
        pieces = [self._take(p, p.records[-1].offset, p.guard, None, now) for p in normal]
        if self.combine:
            sid = store_id((p.tp[0], p.tp[1], p.start, p.end) for p in pieces)
            return Store(self.epoch, sid, (Unit(f"{self.group}:store:{sid}", tuple(pieces)),))
        return Store(self.epoch, "", tuple(Unit(batch_prefix(self.group, p.tp, p.start, p.end), (p,))
                                           for p in pieces))

    def stored(self, store: Store, guard_after: Mapping[TP, int]) -> None:
        """A store is in ClickHouse: advance the guards and the chains of its (still current) pieces."""
        for piece in store.pieces:
            part = self.parts.get(piece.tp)
            if part is None or part.epoch != store.epoch:
                continue  # fenced: a re-armed partition re-forms it from its recorded plan
            part.guard = guard_after[piece.tp]
            if piece.recorded is not None and part.chain and part.chain[0] == piece.recorded:
                part.chain.pop(0)

    # -- internals ---------------------------------------------------------------------------

    def _take(self, part: PartitionState, end: int, guard: int, recorded: RecordedBatch | None,
              now: float) -> Piece:
        take = [r for r in part.records if r.offset <= end]
        part.records = [r for r in part.records if r.offset > end]
        part.first_at = now
        if recorded is not None:
            part.taken_to = recorded.end + 1
            return Piece(part.tp, take, recorded.start, recorded.end, recorded.guard_before, recorded)
        # From where the previous batch ended (2): markers before the first record belong to it.
        start = part.taken_to if 0 <= part.taken_to <= take[0].offset else take[0].offset
        part.taken_to = take[-1].offset + 1
        return Piece(part.tp, take, start, take[-1].offset, guard, None)

    def _skip_landed(self) -> None:
        """Drop chained batches proven landed: their store is landed, or the partition's records
        resume beyond them."""
        for part in self.parts.values():
            while part.chain:
                head = part.chain[0]
                beyond = bool(part.records) and part.records[0].offset > head.end
                if not (beyond or head.landed or (head.store and head.store in self.landed)):
                    break
                if head.store:
                    self.landed.add(head.store)
                part.chain.pop(0)
                part.guard = head.guard_after
                part.records = [r for r in part.records if r.offset > head.end]
                part.taken_to = max(part.taken_to, head.end + 1)
                self.skipped[part.tp] = max(self.skipped.get(part.tp, 0), head.end + 1)

    def _replay(self, now: float) -> Store | None:
        """The next chained batches that can be re-stored now: recorded batches of their own (or of
        a store given up) first, one by one; else the first recorded store all of whose members
        have read up to their ends."""
        alone: list[Piece] = []
        for part in sorted(self.parts.values(), key=lambda p: p.tp):
            if not part.chain:
                continue
            head = part.chain[0]
            if not head.store or head.store in self.split or head.store not in self.stores:
                if head.store and head.store not in self.split:
                    self._split(head.store)
                if part.records and part.records[-1].offset >= head.end:
                    alone.append(self._take(part, head.end, head.guard_before, head, now))
                continue
            members = self.stores[head.store]
            if any(tp not in self.assigned for tp in members):
                self._split(head.store)  # a member is not ours: the store cannot be re-formed here
                if part.records and part.records[-1].offset >= head.end:
                    alone.append(self._take(part, head.end, head.guard_before, head, now))
                continue
            if alone:
                continue  # a whole store goes on its own, after the single batches
            ready = all(
                (m := self.parts.get(tp)) is not None and m.chain and m.chain[0] == b
                and m.records and m.records[-1].offset >= b.end
                for tp, b in members.items())
            if ready:
                pieces = [self._take(self.parts[tp], b.end, b.guard_before, b, now)
                          for tp, b in sorted(members.items())]
                return Store(self.epoch, head.store, (Unit(f"{self.group}:store:{head.store}", tuple(pieces)),))
        if not alone:
            return None
        return Store(self.epoch, "", tuple(Unit(batch_prefix(self.group, p.tp, p.start, p.end), (p,))
                                           for p in alone))

    def _split(self, store: str) -> None:
        self.split.add(store)
        self.split_stores += 1
