"""The meter on real Avro bytes: pricing, debits, dead letters, and the replay guard."""

from __future__ import annotations

from typing import Any

from streams.credits.meter import Meter, RawRecord
from streams.credits.policy import load_policy
from streams.synthetic.generator import Generator
from streams.wire.codec import Decoder, encode_single_object

NOW = 1_793_200_000_000


def _meter() -> Meter:
    return Meter(load_policy(), Decoder("InteractionEvent"), Decoder("CreditGrant"))


def _records(events: list[dict[str, Any]], partition: int = 0) -> list[RawRecord]:
    return [RawRecord("in", partition, i, ev["account_id"].encode(), encode_single_object(ev, "InteractionEvent"))
            for i, ev in enumerate(events)]


def test_a_replayed_batch_is_not_debited_twice() -> None:
    gen = Generator(accounts=5, seed=2)
    events = list(gen.events(200))
    meter = _meter()
    grant_state: dict[str, Any] = {}
    grants = meter.grants([RawRecord("g", 0, i, None, encode_single_object(g, "CreditGrant"))
                           for i, g in enumerate(gen.grants())], grant_state.get, NOW)
    grant_state.update({a: s for a, (_p, s) in grants.grant_updates.items()})
    usage: dict[str, Any] = {}
    first = meter.meter(_records(events), usage.get, grant_state.get, NOW)
    assert len(first.enriched) == 200 and first.skipped_replays == 0
    usage.update({a: s for a, (_p, s) in first.usage_updates.items()})
    # The same records again (a crash after state was written, before the commit): nothing new.
    again = meter.meter(_records(events), usage.get, grant_state.get, NOW)
    assert again.enriched == [] and again.skipped_replays == 200
    # Without the state write the replay recomputes exactly the same records.
    recomputed = meter.meter(_records(events), {}.get, grant_state.get, NOW)
    assert [r["debits"] for r in recomputed.enriched] == [r["debits"] for r in first.enriched]
    assert sum(r["grant_funded_micro"] for r in first.enriched) > 0
    for r in first.enriched:
        assert r["list_micro"] == r["charged_micro"] + r["subsidy_micro"]
        assert r["charged_micro"] == r["grant_funded_micro"] + r["subscription_funded_micro"]
        assert r["policy_version"] == "2026.11-1"


def test_bad_input_becomes_dead_letters_and_the_batch_goes_on() -> None:
    gen = Generator(accounts=3, seed=4)
    good = list(gen.events(3))
    bad_event = dict(good[0], event_id="", input_tokens=5)
    raws = [
        *_records(good),
        RawRecord("in", 0, 10, b"k", b"\x00garbage", [("h", b"v")]),
        RawRecord("in", 0, 11, b"k", encode_single_object(bad_event, "InteractionEvent")),
        RawRecord("in", 0, 12, b"k", None),
    ]
    out = _meter().meter(raws, {}.get, {}.get, NOW)
    assert len(out.enriched) == 3
    kinds = {d["source_offset"]: d["error_kind"] for d in out.dead_letters}
    assert kinds[11] == "VALIDATION" and 10 in kinds and kinds[12] == "TRUNCATED"
    dl = next(d for d in out.dead_letters if d["source_offset"] == 10)
    assert dl["original"] == b"\x00garbage" and dl["message"]


def test_a_resent_event_id_is_a_duplicate_dead_letter_and_is_debited_once() -> None:
    gen = Generator(accounts=4, seed=9)
    events = list(gen.events(100))
    meter = _meter()
    grant_state: dict[str, Any] = {}
    grants = meter.grants([RawRecord("g", 0, i, None, encode_single_object(g, "CreditGrant"))
                           for i, g in enumerate(gen.grants())], grant_state.get, NOW)
    grant_state.update({a: s for a, (_p, s) in grants.grant_updates.items()})
    usage: dict[str, Any] = {}
    first = meter.meter(_records(events[:60]), usage.get, grant_state.get, NOW)
    usage.update({a: s for a, (_p, s) in first.usage_updates.items()})
    # Later offsets: 40 new events and 20 resends of events metered in the first batch (a later batch
    # reads them from the persisted state), then a resend of a resend within one batch.
    resent = events[60:] + events[10:30] + [events[70]]
    raws = [RawRecord("in", 0, 100 + i, ev["account_id"].encode(), encode_single_object(ev, "InteractionEvent"))
            for i, ev in enumerate(resent)]
    second = meter.meter(raws, usage.get, grant_state.get, NOW)
    assert len(second.enriched) == 40 and second.duplicates == 21
    assert {d["error_kind"] for d in second.dead_letters} == {"DUPLICATE"}
    assert sorted(d["source_offset"] for d in second.dead_letters) == list(range(140, 161))
    assert {r["event_id"] for r in second.enriched} == {ev["event_id"] for ev in events[60:]}
    usage.update({a: s for a, (_p, s) in second.usage_updates.items()})
    # Replaying the second batch (a crash before its commit) is a replay, not 21 more duplicates.
    replay = meter.meter(raws, usage.get, grant_state.get, NOW)
    assert replay.skipped_replays == len(raws) and replay.duplicates == 0 and not replay.dead_letters


def test_events_on_a_model_missing_from_the_price_table_are_counted() -> None:
    events = list(Generator(accounts=3, seed=6).events(30))
    for ev in events[:7]:
        ev["model"] = "nova-preview"
    result = _meter().meter(_records(events), {}.get, {}.get, NOW)
    assert len(result.enriched) == 30 and result.unpriced == {"nova-preview": 7}
    fallback = load_policy().price_for("*")
    assert not load_policy().is_priced("nova-preview") and load_policy().is_priced("atlas-small")
    assert load_policy().price_for("nova-preview") == fallback


def test_a_replayed_or_resent_unpriced_event_is_not_counted_again() -> None:
    events = list(Generator(accounts=3, seed=6).events(30))
    for ev in events:
        ev["model"] = "nova-preview"
    meter = _meter()
    usage: dict[str, Any] = {}
    first = meter.meter(_records(events), usage.get, {}.get, NOW)
    assert first.unpriced == {"nova-preview": 30}
    usage.update({a: s for a, (_p, s) in first.usage_updates.items()})
    replay = meter.meter(_records(events), usage.get, {}.get, NOW)
    assert replay.skipped_replays == 30 and replay.unpriced == {}
    resent = [RawRecord("in", 0, 100 + i, ev["account_id"].encode(), encode_single_object(ev, "InteractionEvent"))
              for i, ev in enumerate(events[:5])]
    again = meter.meter(resent, usage.get, {}.get, NOW)
    assert again.duplicates == 5 and again.unpriced == {}
