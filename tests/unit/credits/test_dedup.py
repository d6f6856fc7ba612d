"""The ring of event ids an account was metered for: membership, the window, the bound."""

from __future__ import annotations

from streams.credits.dedup import ENTRY_BYTES, SeenIds, id_hash

DAY_MS = 86_400_000
WEEK_S = 7 * 86_400


def test_an_id_is_seen_after_it_is_added_and_survives_a_round_trip() -> None:
    ids = SeenIds.load(b"")
    ids.add(id_hash("ev-1"), 1_000 * DAY_MS, WEEK_S, 100)
    assert id_hash("ev-1") in ids and id_hash("ev-2") not in ids
    again = SeenIds.load(ids.dump())
    assert id_hash("ev-1") in again and len(again) == 1
    assert ids.dump() == bytes(ids.raw) and len(ids.dump()) == ENTRY_BYTES  # one 12-byte entry, as stored


def test_membership_only_matches_whole_entries() -> None:
    ids = SeenIds.load(b"")
    ids.add(b"\x00" * 4 + b"abcd", 5_000, WEEK_S, 100)
    ids.add(b"efgh" + b"\x00" * 4, 6_000, WEEK_S, 100)
    # The bytes of a misaligned window (the end of one hash and the start of the time) never count.
    assert b"abcd" + b"\x05\x00\x00\x00" not in ids
    assert b"\x00" * 4 + b"abcd" in ids


def test_ids_older_than_the_window_are_forgotten() -> None:
    ids = SeenIds.load(b"")
    ids.add(id_hash("old"), 0, WEEK_S, 100)
    ids.add(id_hash("mid"), 3 * DAY_MS, WEEK_S, 100)
    ids.add(id_hash("new"), 8 * DAY_MS, WEEK_S, 100)
    assert id_hash("old") not in ids and id_hash("mid") in ids and id_hash("new") in ids


def test_the_ring_holds_at_most_max_ids() -> None:
    ids = SeenIds.load(b"")
    for i in range(50):
        ids.add(id_hash(f"ev-{i}"), i * 1000, WEEK_S, 10)
    assert len(ids) == 10 and len(ids.raw) == 10 * ENTRY_BYTES
    assert id_hash("ev-49") in ids and id_hash("ev-39") not in ids
