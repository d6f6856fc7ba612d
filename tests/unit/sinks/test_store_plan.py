"""The sink's store planning, without Kafka or ClickHouse: which buffered records are stored
together, under which tokens, and what a replay after a crash, a stall or a rebalance re-forms."""

from __future__ import annotations

from dataclasses import dataclass

from sinks.store_plan import RecordedBatch, Store, StorePlanner, arm_partition, store_id

T = "usage-enriched"
G = "grp"


@dataclass(frozen=True)
class _Rec:
    offset: int


def _recs(offsets: range) -> list[_Rec]:
    return [_Rec(o) for o in offsets]


def _planner(combine: bool = True, parts: int = 3, committed: int = 0) -> StorePlanner:
    planner = StorePlanner(G, combine=combine, batch_rows=1_000, flush_seconds=1.0)
    planner.assign((T, p) for p in range(parts))
    for p in range(parts):
        planner.arm((T, p), committed, None, [])
    return planner


def _ranges(store: Store) -> dict[tuple[str, int], tuple[int, int]]:
    return {p.tp: (p.start, p.end) for p in store.pieces}


def _done(planner: StorePlanner, store: Store) -> None:
    planner.stored(store, {p.tp: p.guard_before + len(p.records) for p in store.pieces})


def test_nothing_is_due_before_the_age_or_the_row_bound() -> None:
    planner = _planner()
    planner.add((T, 0), _recs(range(10)), now=100.0)
    planner.add((T, 1), _recs(range(10)), now=100.3)
    assert planner.next_store(now=100.5, force=False) is None
    store = planner.next_store(now=100.5, force=True)
    assert store is not None and len(store.pieces) == 2
    assert planner.next_store(now=100.5, force=True) is None, "records are taken out once"


def test_one_partition_due_takes_every_partition_with_rows_under_one_token() -> None:
    planner = _planner()
    planner.add((T, 0), _recs(range(10)), now=0.0)
    planner.add((T, 1), _recs(range(5)), now=1.4)
    store = planner.next_store(now=1.5, force=False)
    assert store is not None
    assert _ranges(store) == {(T, 0): (0, 9), (T, 1): (0, 4)}
    assert len(store.units) == 1
    assert store.store == store_id([(T, 0, 0, 9), (T, 1, 0, 4)])
    assert store.units[0].token("events") == f"{G}:store:{store.store}:events"
    assert store.commits() == {(T, 0): 10, (T, 1): 5}
    rows = store.plan_rows(G, {(T, 0): 42, (T, 1): 7}, {(T, 0): 10, (T, 1): 5}, 123)
    assert rows == [(G, T, 0, 0, 9, -1, 42, 10, 123, store.store, False),
                    (G, T, 1, 0, 4, -1, 7, 5, 123, store.store, False)]


def test_the_row_bound_counts_every_partition() -> None:
    planner = _planner()
    planner.add((T, 0), _recs(range(600)), now=0.0)
    assert planner.next_store(now=0.1, force=False) is None
    planner.add((T, 1), _recs(range(400)), now=0.0)
    assert planner.next_store(now=0.1, force=False) is not None


def test_a_server_sink_stores_each_partition_batch_under_its_own_token() -> None:
    planner = _planner(combine=False)
    planner.add((T, 0), _recs(range(3, 8)), now=0.0)
    planner.add((T, 2), _recs(range(1)), now=0.0)
    store = planner.next_store(now=5.0, force=False)
    assert store is not None and store.store == ""
    # A batch starts at the committed offset (0), not its first record: 0-2 may be markers.
    assert [u.token_prefix for u in store.units] == [f"{G}:{T}:0:0-7", f"{G}:{T}:2:0-0"]


def test_guards_carry_from_store_to_store() -> None:
    planner = _planner(parts=1)
    planner.add((T, 0), _recs(range(5)), now=0.0)
    first = planner.next_store(now=0.0, force=True)
    assert first is not None and first.pieces[0].guard_before == -1
    planner.stored(first, {(T, 0): 77})
    planner.add((T, 0), _recs(range(5, 9)), now=0.0)
    second = planner.next_store(now=0.0, force=True)
    assert second is not None and second.pieces[0].guard_before == 77


def test_records_fetched_twice_or_before_a_rebalance_are_dropped() -> None:
    planner = _planner(parts=1, committed=10)
    planner.add((T, 0), _recs(range(5, 15)), now=0.0)  # 5..9 are below the committed offset
    planner.add((T, 0), _recs(range(12, 20)), now=0.0)  # 12..14 are buffered already
    store = planner.next_store(now=0.0, force=True)
    assert store is not None and [r.offset for r in store.pieces[0].records] == list(range(10, 20))
    assert planner.stale_records == 8


def test_records_of_an_unarmed_partition_are_refused() -> None:
    planner = _planner(parts=1)
    assert not planner.add((T, 5), _recs(range(3)), now=0.0)


# -- replays -----------------------------------------------------------------------------------

def _recorded(p: int, start: int, end: int, store: str = "", before: int = -1, after: int = -1) -> RecordedBatch:
    return RecordedBatch(T, p, start, end, before, after, store)


def test_a_replay_cuts_at_the_recorded_end_whatever_the_fetches_formed() -> None:
    planner = StorePlanner(G, combine=False, batch_rows=1_000, flush_seconds=1.0)
    planner.assign([(T, 0), (T, 1)])
    planner.arm((T, 0), 100, None, [_recorded(0, 100, 199, before=5, after=9)])
    planner.arm((T, 1), 0, None, [])
    planner.add((T, 0), _recs(range(100, 150)), now=0.0)
    planner.add((T, 1), _recs(range(10)), now=0.0)
    store = planner.next_store(now=5.0, force=True)
    # The other partition goes on; the replay waits, even when forced.
    assert store is not None and _ranges(store) == {(T, 1): (0, 9)}
    _done(planner, store)
    assert planner.next_store(now=5.0, force=True) is None
    planner.add((T, 0), _recs(range(150, 260)), now=5.0)
    replay = planner.next_store(now=5.0, force=False)
    assert replay is not None
    assert [u.token_prefix for u in replay.units] == [f"{G}:{T}:0:100-199"], "the recorded token"
    piece = replay.pieces[0]
    assert (piece.start, piece.end, piece.guard_before) == (100, 199, 5)
    assert [r.offset for r in piece.records] == list(range(100, 200))
    planner.stored(replay, {(T, 0): 9})
    after = planner.next_store(now=5.0, force=True)
    assert after is not None and _ranges(after) == {(T, 0): (200, 259)}
    assert after.pieces[0].guard_before == 9


def test_a_recorded_multi_partition_store_is_re_formed_whole_whatever_order_records_come_in() -> None:
    planner = _planner(parts=0)
    planner.assign([(T, 0), (T, 1), (T, 2)])
    x = {(T, 0): _recorded(0, 100, 149, "X", 1, 2), (T, 1): _recorded(1, 7, 10, "X", 3, 4)}
    planner.learn_stores({"X": x.values()}, {(T, 0): 100, (T, 1): 7})
    planner.arm((T, 0), 100, None, [x[(T, 0)]])
    planner.arm((T, 1), 7, None, [x[(T, 1)]])
    planner.arm((T, 2), 0, None, [])
    planner.add((T, 0), _recs(range(100, 160)), now=0.0)
    planner.add((T, 1), _recs(range(7, 9)), now=0.0)
    planner.add((T, 2), _recs(range(10)), now=0.0)
    # (T, 1) has not read up to its end yet; (T, 2), not in the store, may go on.
    other = planner.next_store(now=5.0, force=True)
    assert other is not None and _ranges(other) == {(T, 2): (0, 9)}
    assert planner.next_store(now=5.0, force=True) is None
    planner.add((T, 1), _recs(range(9, 13)), now=5.0)
    replay = planner.next_store(now=5.0, force=False)
    assert replay is not None and replay.store == "X"
    assert replay.units[0].token_prefix == f"{G}:store:X"
    assert _ranges(replay) == {(T, 0): (100, 149), (T, 1): (7, 10)}
    assert {p.tp: p.guard_before for p in replay.pieces} == {(T, 0): 1, (T, 1): 3}
    rows = replay.plan_rows(G, {(T, 0): 2, (T, 1): 4}, {(T, 0): 50, (T, 1): 4}, 0)
    assert [r[9] for r in rows] == ["X", "X"], "re-recorded under the same store"
    planner.stored(replay, {(T, 0): 2, (T, 1): 4})
    rest = planner.next_store(now=5.0, force=True)
    assert rest is not None and _ranges(rest) == {(T, 0): (150, 159), (T, 1): (11, 12)}


def test_a_chain_of_uncommitted_stores_is_replayed_store_by_store() -> None:
    # Two stores landed (or half landed) before their commits failed; after the rebalance both must
    # be re-formed with their own boundaries, not merged into a new batch with a new token.
    planner = _planner(parts=0)
    planner.assign([(T, 0), (T, 1)])
    x = [_recorded(0, 0, 9, "X", -1, 5), _recorded(1, 0, 4, "X", -1, 3)]
    y = [_recorded(0, 10, 19, "Y", 5, 8)]
    planner.learn_stores({"X": x, "Y": y}, {(T, 0): 0, (T, 1): 0})
    planner.arm((T, 0), 0, None, [y[0], x[0]])
    planner.arm((T, 1), 0, None, [x[1]])
    planner.add((T, 0), _recs(range(30)), now=0.0)
    planner.add((T, 1), _recs(range(8)), now=0.0)
    first = planner.next_store(now=0.0, force=True)
    assert first is not None and first.store == "X" and _ranges(first) == {(T, 0): (0, 9), (T, 1): (0, 4)}
    planner.stored(first, {(T, 0): 5, (T, 1): 3})
    second = planner.next_store(now=0.0, force=True)
    # Y goes next, on its own; (T, 1)'s new records may ride in the same flush only afterwards.
    assert second is not None and second.store == "Y" and _ranges(second) == {(T, 0): (10, 19)}
    assert second.pieces[0].guard_before == 5
    planner.stored(second, {(T, 0): 8})
    third = planner.next_store(now=0.0, force=True)
    assert third is not None and _ranges(third) == {(T, 0): (20, 29), (T, 1): (5, 7)}
    assert {p.tp: p.guard_before for p in third.pieces} == {(T, 0): 8, (T, 1): 3}


def test_a_store_committed_for_any_member_landed_and_is_skipped_everywhere() -> None:
    # The commit of X reached (T, 0) but not (T, 1): X is in ClickHouse in full.
    planner = _planner(parts=0)
    planner.assign([(T, 0), (T, 1)])
    x = [_recorded(0, 0, 9, "X", -1, 5), _recorded(1, 0, 4, "X", -1, 3)]
    planner.learn_stores({"X": x}, {(T, 0): 10, (T, 1): 0})
    planner.arm((T, 0), 10, x[0], [])
    planner.arm((T, 1), 0, None, [x[1]])
    planner.add((T, 1), _recs(range(8)), now=0.0)
    store = planner.next_store(now=0.0, force=True)
    assert store is not None and _ranges(store) == {(T, 1): (5, 7)}
    assert store.pieces[0].guard_before == 3


def test_records_resuming_beyond_a_recorded_batch_prove_it_landed() -> None:
    # The stale member's commit of [100, 199] arrived after the re-arm read the committed offset.
    planner = _planner(parts=0)
    planner.assign([(T, 0)])
    planner.arm((T, 0), 100, None, [_recorded(0, 100, 199, before=5, after=9)])
    planner.parts[(T, 0)].next_offset = 200  # the fetch position, reset after the late commit
    planner.add((T, 0), _recs(range(200, 210)), now=0.0)
    store = planner.next_store(now=0.0, force=True)
    assert store is not None and _ranges(store) == {(T, 0): (200, 209)}
    assert store.pieces[0].guard_before == 9


def test_a_store_with_a_member_not_assigned_here_is_split_into_recorded_batches() -> None:
    planner = _planner(parts=0)
    planner.assign([(T, 0)])
    x = [_recorded(0, 0, 9, "X", -1, 5), _recorded(1, 0, 4, "X", -1, 3)]
    planner.learn_stores({"X": x}, {(T, 0): 0})
    planner.arm((T, 0), 0, None, [x[0]])
    planner.add((T, 0), _recs(range(12)), now=0.0)
    store = planner.next_store(now=0.0, force=False)
    assert store is not None and store.store == ""
    assert [u.token_prefix for u in store.units] == [f"{G}:{T}:0:0-9"]
    assert store.pieces[0].guard_before == -1 and planner.split_stores == 1


def test_a_chain_not_starting_at_the_committed_offset_is_given_up() -> None:
    state, broken = arm_partition((T, 0), 0, 50, None, [_recorded(0, 40, 60)], set())
    assert broken and state.chain == [] and state.next_offset == 50
    state, broken = arm_partition((T, 0), 0, 50, _recorded(0, 0, 49, after=12), [_recorded(0, 50, 60)], set())
    assert not broken and len(state.chain) == 1 and state.guard == 12


def test_revoked_partitions_fence_the_stores_planned_before() -> None:
    planner = _planner(parts=2)
    planner.add((T, 0), _recs(range(5)), now=0.0)
    planner.add((T, 1), _recs(range(5)), now=0.0)
    store = planner.next_store(now=0.0, force=True)
    assert store is not None and store.epoch == planner.epoch
    planner.revoke([(T, 0), (T, 1)])
    planner.assign([(T, 0), (T, 1)])
    assert store.epoch != planner.epoch, "the service neither inserts nor commits this store"
    assert planner.unarmed() == [(T, 0), (T, 1)] and planner.buffered() == 0
    planner.arm((T, 0), 0, None, [])
    planner.stored(store, {(T, 0): 99, (T, 1): 99})
    assert planner.parts[(T, 0)].guard == -1, "a stale store does not move the new state"


def test_empty_batches_are_never_stored() -> None:
    planner = _planner()
    planner.add((T, 0), [], now=0.0)
    assert planner.next_store(now=100.0, force=True) is None


def test_store_names_depend_on_the_batches_only() -> None:
    one = [("t", 0, 1, 5), ("t", 1, 7, 9)]
    assert store_id(one) == store_id(list(reversed(one)))
    assert store_id(one) != store_id([("t", 0, 1, 5), ("t", 1, 7, 10)])
    assert store_id(one) != store_id(one[:1])


def test_a_store_marked_landed_is_skipped_even_where_it_cannot_be_re_formed() -> None:
    # Stored in full by a member whose commit was fenced; its partitions are now spread out.
    planner = _planner(parts=0)
    planner.assign([(T, 0)])
    x = [_recorded(0, 0, 9, "X", -1, 5), RecordedBatch(T, 1, 0, 4, -1, 3, "X", landed=True)]
    planner.learn_stores({"X": x}, {(T, 0): 0})
    planner.arm((T, 0), 0, None, [x[0]])
    planner.add((T, 0), _recs(range(12)), now=0.0)
    store = planner.next_store(now=0.0, force=True)
    assert store is not None and _ranges(store) == {(T, 0): (10, 11)}
    assert store.pieces[0].guard_before == 5 and planner.split_stores == 0
    rows = store.plan_rows(G, {(T, 0): 6}, {(T, 0): 2}, 0, landed=True)
    assert rows[0][-1] is True


def test_skipped_landed_batches_are_owed_a_commit_once() -> None:
    planner = _planner(parts=0)
    planner.assign([(T, 0), (T, 1)])
    x = [RecordedBatch(T, 0, 0, 9, -1, 5, "X", landed=True)]
    planner.learn_stores({"X": x}, {(T, 0): 0})
    planner.arm((T, 0), 0, None, x)
    planner.arm((T, 1), 0, None, [])
    assert planner.take_skipped() == {(T, 0): 10}
    assert planner.take_skipped() == {}


def test_a_batch_starts_where_the_previous_one_ended_so_a_chain_spans_markers() -> None:
    planner = _planner(parts=1, committed=10)
    planner.add((T, 0), _recs(range(10, 20)), now=0.0)
    first = planner.next_store(now=0.0, force=True)
    assert first is not None and _ranges(first) == {(T, 0): (10, 19)}
    _done(planner, first)
    planner.add((T, 0), _recs(range(21, 30)), now=0.0)  # 20 is a transaction marker
    second = planner.next_store(now=0.0, force=True)
    assert second is not None and _ranges(second) == {(T, 0): (20, 29)}
    # Recorded, then a crash before its commit: re-armed at the first store's commit (20), the
    # chain starts there and is re-formed, not given up.
    b = second.pieces[0]
    state, broken = arm_partition((T, 0), 1, 20, None, [_recorded(0, b.start, b.end)], set())
    assert not broken and [(c.start, c.end) for c in state.chain] == [(20, 29)]


def test_an_idle_partition_commits_past_trailing_markers_and_nothing_else() -> None:
    planner = _planner(parts=3, committed=0)
    for p in range(3):
        planner.add((T, p), _recs(range(5)), now=0.0)
    store = planner.next_store(now=0.0, force=True)
    assert store is not None
    _done(planner, store)
    planner.committed_to(store.commits())
    planner.add((T, 1), _recs(range(7, 9)), now=0.0)  # buffered, not stored: never committed past
    planner.parts[(T, 2)].chain = [_recorded(2, 5, 9)]  # a recorded batch to re-form first
    # Positions: 0 is past a marker at 5; 1 past a marker at 9; 2 past its chain's start.
    positions = {(T, 0): 6, (T, 1): 10, (T, 2): 10}
    assert planner.idle_commits(positions) == {(T, 0): 6}
    assert planner.idle_commits(positions) == {(T, 0): 6}, "owed until its commit is known to have landed"
    planner.committed_to({(T, 0): 6})
    assert planner.idle_commits({(T, 0): 6}) == {}
    # A position behind what was buffered (the schema gate sought back): nothing to commit.
    assert planner.idle_commits({(T, 0): 3}) == {}
    # The next batch of 0 starts at the commit, so a chain recorded from it meets the committed offset.
    planner.add((T, 0), _recs(range(7, 9)), now=0.0)
    planner.parts[(T, 1)].records.clear()
    planner.parts[(T, 2)].chain.clear()
    nxt = planner.next_store(now=0.0, force=True)
    assert nxt is not None and _ranges(nxt)[(T, 0)] == (6, 8)
    # A stale epoch's partitions commit nothing.
    planner.revoke([])
    assert planner.idle_commits({(T, 0): 20}) == {}
