"""The intake's pure decisions: where a partition's batch is cut for a missing schema, which records
are forwarded to their owner partition, and that one copy of a forwarded record is applied."""

from __future__ import annotations

from streams.credits.account_state import AccountUsage
from streams.credits.meter import Meter, RawRecord, first_forward
from streams.credits.policy import load_policy
from streams.runtime.batch_send import KeyPartitions
from streams.runtime.repartition import Owners, forwards
from streams.runtime.schema_gate import cut_undecided
from streams.synthetic.generator import Generator
from streams.wire.codec import Decoder, encode_single_object
from streams.wire.headers import forwarded_from, forwarded_from_header

NOW = 1_793_200_000_000


def test_the_cut_is_at_the_first_record_needing_an_undecided_id() -> None:
    recs = [RawRecord("t", 0, i, None, v) for i, v in enumerate(
        [b"\xc3\x01" + b"\x00" * 8, b"\x00\x00\x00\x00\x07x", b"\x00\x00\x00\x00\x09x", b"junk"])]
    assert cut_undecided(recs, {9}) == 2
    assert cut_undecided(recs, {7, 9}) == 1
    assert cut_undecided(recs, {8}) is None


def test_forwarded_from_round_trips() -> None:
    assert forwarded_from([("a", b"x"), forwarded_from_header(3, 1 << 40)]) == (3, 1 << 40)
    assert forwarded_from([("a", b"x")]) is None


def test_one_copy_per_origin_is_applied() -> None:
    state = AccountUsage(input_partition=1, applied_offset=5)
    assert first_forward(state, [forwarded_from_header(2, 10)])
    assert not first_forward(state, [forwarded_from_header(2, 10)])  # a replayed forwarder's copy
    assert not first_forward(state, [forwarded_from_header(2, 9)])
    assert first_forward(state, [forwarded_from_header(3, 1)])  # another origin partition
    assert first_forward(state, [forwarded_from_header(2, 11)])
    assert first_forward(state, [("other", b"")])  # not a forward
    assert state.forwarded_offsets == {2: 11, 3: 1}


def test_misplaced_events_and_grants_are_forwarded_not_applied() -> None:
    gen = Generator(accounts=40, seed=9)
    events = list(gen.events(400))
    meter = Meter(load_policy(), Decoder("InteractionEvent"), Decoder("CreditGrant"))
    owners = Owners({"in": 4, "g": 4})
    meter.event_owner = owners.lookup("in")
    meter.grant_owner = owners.lookup("g")
    # Every record on partition 0 with a null key, as a producer without keys might.
    raws = [RawRecord("in", 0, i, None, encode_single_object(ev, "InteractionEvent")) for i, ev in enumerate(events)]
    out = meter.meter(raws, {}.get, {}.get, NOW)
    parts = KeyPartitions(4)
    owned = [ev for ev in events if parts(ev["account_id"].encode()) == 0]
    assert 0 < len(owned) < len(events)
    assert [r["event_id"] for r in out.enriched] == [ev["event_id"] for ev in owned]
    assert len(out.forward) == len(events) - len(owned)
    copies = forwards(out.forward, owners.of("in"))
    assert 0 not in copies
    for partition, outgoing in copies.items():
        for key, _value, headers in outgoing:
            assert key is not None and parts(key) == partition
            assert forwarded_from(headers) is not None
    # Re-read on the owner partition, the copies are metered there, once.
    for partition, outgoing in copies.items():
        recs = [RawRecord("in", partition, 100 + i, k, v, h) for i, (k, v, h) in enumerate(outgoing)]
        first = meter.meter(recs, {}.get, {}.get, NOW)
        assert len(first.enriched) == len(recs) and not first.forward
        usage = {a: s for a, (_p, s) in first.usage_updates.items()}
        again = [RawRecord("in", partition, 500 + i, k, v, h) for i, (k, v, h) in enumerate(outgoing)]
        assert meter.meter(again, usage.get, {}.get, NOW).enriched == []
    grants = [RawRecord("g", 1, i, None, encode_single_object(g, "CreditGrant")) for i, g in enumerate(gen.grants())]
    g_out = meter.grants(grants, {}.get, NOW)
    assert len(g_out.forward) + len(g_out.accepted_grants) == len(grants) and g_out.forward
    assert all(parts(a.encode()) == 1 for a in g_out.grant_updates)
