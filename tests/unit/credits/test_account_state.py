"""The typed usage state: its encoding, and reading what earlier versions wrote (JSON with short keys)
so that every guard keeps holding across an upgrade."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from streams.credits.account_state import LEGACY_KEYS, USAGE_CODEC, AccountUsage, copy_usage, usage_codec
from streams.credits.balances import balance_record
from streams.credits.dedup import SeenIds, id_hash
from streams.credits.meter import Meter, RawRecord
from streams.credits.policy import load_policy
from streams.runtime.changelog import ChangelogTable
from streams.synthetic.generator import Generator
from streams.wire.codec import Decoder, encode_single_object
from streams.wire.headers import forwarded_from_header
from tests.unit.runtime.test_tables import FakeProducer

NOW = 1_793_200_000_000

# Written by the previous version (commit a499122, ``_encode`` of ``streams/runtime/changelog.py``)
# for account acct-3-000000 of Generator(accounts=1, seed=3): its three first events on partition 2 at
# offsets 40-42, the third a copy forwarded from partition 5 offset 19, then the batch's balance.
LEGACY_FORWARDED = (b'{"p":2,"o":42,"spent":{"grant-acct-3-000000-0":200184},'
                    b'"ids":"G2gLKZaFXIjCP+BqsJh8UCx4N7coQOBqMcg5I+4cQuyMQOBq","t":1793081484786,'
                    b'"f":{"5":19},"v":1,"n":["hi"]}')
# Same version, acct-5-000000 of Generator(accounts=1, seed=5), no grants: one event at offset 7.
LEGACY_SUBSCRIPTION = (b'{"p":0,"o":7,"spent":{},"ids":"ns2cT5L+rUR8VN9q","sub":22142,"t":1793021052228,'
                       b'"v":1}')


def _meter() -> Meter:
    return Meter(load_policy(), Decoder("InteractionEvent"), Decoder("CreditGrant"))


def test_a_legacy_record_decodes_into_named_fields() -> None:
    old = USAGE_CODEC.decode(LEGACY_FORWARDED)
    assert (old.input_partition, old.applied_offset) == (2, 42)
    assert old.spent_by_grant == {"grant-acct-3-000000-0": 200184}
    assert len(old.seen_event_ids) == 3 * 12
    assert (old.subscription_funded_micro, old.event_time_ms, old.balance_seq) == (0, 1793081484786, 1)
    assert old.notifications_sent == ["hi"] and old.forwarded_offsets == {5: 19}
    sub = USAGE_CODEC.decode(memoryview(LEGACY_SUBSCRIPTION))  # the table hands the codec a memoryview
    assert (sub.input_partition, sub.applied_offset, sub.spent_by_grant) == (0, 7, {})
    assert (sub.subscription_funded_micro, sub.balance_seq, sub.notifications_sent, sub.forwarded_offsets) == \
           (22142, 1, [], {})
    # The oldest shape (before balances and forwarding): only the meter's four keys.
    bare = USAGE_CODEC.decode(b'{"p":1,"o":3,"spent":{"g":5},"ids":""}')
    assert bare == AccountUsage(1, 3, {"g": 5})
    assert set(LEGACY_KEYS) == set(orjson.loads(LEGACY_FORWARDED)) | {"sub"}


def test_every_guard_holds_on_state_a_previous_version_wrote() -> None:
    """Replaying the batch that wrote LEGACY_FORWARDED, resending one of its events and re-forwarding
    its forwarded copy, against the decoded legacy state: nothing is debited again."""
    gen = Generator(accounts=1, seed=3)
    meter = _meter()
    grants: dict[str, Any] = {}
    granted = meter.grants([RawRecord("g", 0, i, None, encode_single_object(g, "CreditGrant"))
                            for i, g in enumerate(gen.grants())], grants.get, NOW)
    grants.update({a: s for a, (_p, s) in granted.grant_updates.items()})
    events = list(gen.events(3))
    account = events[0]["account_id"]
    raws = [encode_single_object(ev, "InteractionEvent") for ev in events]
    usage = {account: USAGE_CODEC.decode(LEGACY_FORWARDED)}
    # Without the state, the batch recomputes exactly what the legacy state records.
    fresh = meter.meter([RawRecord("in", 2, 40 + i, account.encode(), v, [forwarded_from_header(5, 19)] if i == 2
                                   else []) for i, v in enumerate(raws)], {}.get, grants.get, NOW)
    state = fresh.usage_updates[account][1]
    assert (state.input_partition, state.applied_offset, state.spent_by_grant, state.seen_event_ids,
            state.event_time_ms, state.forwarded_offsets) == \
           (usage[account].input_partition, usage[account].applied_offset, usage[account].spent_by_grant,
            usage[account].seen_event_ids, usage[account].event_time_ms, usage[account].forwarded_offsets)
    ring = SeenIds.load(usage[account].seen_event_ids)
    assert all(id_hash(ev["event_id"]) in ring for ev in events)
    replay = meter.meter([RawRecord("in", 2, 40 + i, account.encode(), v) for i, v in enumerate(raws)],
                         usage.get, grants.get, NOW)
    assert replay.skipped_replays == 3 and not replay.enriched and not replay.usage_updates
    resend = meter.meter([RawRecord("in", 2, 50, account.encode(), raws[0])], usage.get, grants.get, NOW)
    assert resend.duplicates == 1 and not resend.enriched
    assert resend.usage_updates[account][1].spent_by_grant == usage[account].spent_by_grant
    forwarded = meter.meter([RawRecord("in", 2, 51, account.encode(), raws[2], [forwarded_from_header(5, 19)])],
                            usage.get, grants.get, NOW)
    assert forwarded.skipped_forwards == 1 and not forwarded.enriched
    balance = balance_record(account, grants.get(account), usage[account], "pv", 2, NOW)
    assert (balance["balance_seq"], balance["grant_funded_micro"], balance["source_offset"]) == (1, 200184, 42)


def test_the_encoding_round_trips_and_is_smaller_than_the_legacy_json() -> None:
    for legacy in (LEGACY_FORWARDED, LEGACY_SUBSCRIPTION):
        state = USAGE_CODEC.decode(legacy)
        encoded = USAGE_CODEC.encode(state)
        assert encoded[0] != ord("{")  # never mistaken for a legacy record
        assert USAGE_CODEC.decode(encoded) == state
        assert len(encoded) < len(legacy) * 0.7
    assert USAGE_CODEC.decode(USAGE_CODEC.encode(AccountUsage())) == AccountUsage()


def test_a_record_with_fewer_fields_reads_the_rest_as_defaults() -> None:
    """Array-like evolution: a field added later decodes as its default from an older record."""
    older = msgspec.msgpack.encode([3, 9, {"g": 1}, b""])
    assert USAGE_CODEC.decode(older) == AccountUsage(3, 9, {"g": 1})
    # A later version's record, with a field appended: read, the field ignored.
    later = msgspec.msgpack.encode([*msgspec.msgpack.decode(USAGE_CODEC.encode(AccountUsage(3, 9))), "new", 1])
    assert USAGE_CODEC.decode(later) == AccountUsage(3, 9)
    with pytest.raises(msgspec.ValidationError):
        USAGE_CODEC.decode(msgspec.msgpack.encode([3, "nine"]))


def test_a_copy_shares_no_container_with_its_original() -> None:
    original = USAGE_CODEC.decode(LEGACY_FORWARDED)
    frozen = USAGE_CODEC.encode(original)
    copy = copy_usage(original)
    assert copy == original and copy is not original
    copy.spent_by_grant["g2"] = 1
    copy.notifications_sent.append("low#1")
    copy.forwarded_offsets[5] = 99
    copy.balance_seq += 1
    assert USAGE_CODEC.encode(original) == frozen
    assert copy_usage(None) == AccountUsage(-1, -1, {}, b"", 0, 0, 0, [], {})


def test_the_table_reads_legacy_and_new_records_and_writes_the_new_encoding(tmp_path: Path) -> None:
    table = ChangelogTable("account-usage", "u-changelog", 6, hot_max=0, state_dir=str(tmp_path),
                           codec=USAGE_CODEC)
    producer = FakeProducer()
    try:
        # Recovery of a changelog holding both encodings (an upgrade mid-way through).
        table.restore(2, b"old", LEGACY_FORWARDED)
        table.restore(0, b"new", USAGE_CODEC.encode(AccountUsage(0, 5, {"g": 7})))
        old, new = table.get("old"), table.get("new")
        assert isinstance(old, AccountUsage) and old.forwarded_offsets == {5: 19}
        assert new == AccountUsage(0, 5, {"g": 7})
        old.applied_offset = 43

        async def put() -> None:
            await asyncio.gather(*await table.put_many(producer, [(2, "old", old)]))  # type: ignore[arg-type]

        asyncio.run(put())
        [(partition, key, value)] = producer.sent
        assert (partition, key) == (2, b"old") and value is not None and value[0] != ord("{")
        assert USAGE_CODEC.decode(value) == old
        # Evicted (hot_max 0) and read back from the local store: the written value.
        assert "old" not in table._hot and table.get("old") == old
    finally:
        table.close()


def test_legacy_writes_give_the_previous_versions_json_back() -> None:
    """For a rolling upgrade (CREDITFLOW_USAGE_STATE_LEGACY_JSON): what an old worker wrote, it reads
    back key for key (``sub`` written at 0 where it had never been set, which it reads as 0)."""
    codec = usage_codec(legacy_writes=True)
    for legacy in (LEGACY_FORWARDED, LEGACY_SUBSCRIPTION):
        state = codec.decode(legacy)
        written = codec.encode(state)
        assert orjson.loads(written) == {"sub": 0, "n": [], "f": {}, **orjson.loads(legacy)}
        assert codec.decode(written) == state == USAGE_CODEC.decode(USAGE_CODEC.encode(state))
    assert usage_codec(legacy_writes=False) is USAGE_CODEC
