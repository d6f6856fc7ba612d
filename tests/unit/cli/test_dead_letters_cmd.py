"""The dead-letter commands' pure parts: time filters, selection against the replay ledger, headers."""

from __future__ import annotations

from typing import Any

import click
import pytest

from streams.cli.dead_letters import parse_time
from streams.runtime.dead_letter_replay import DeadLetterFilter, replay_headers, to_replay
from streams.wire.dead_letters import build_dead_letter
from streams.wire.headers import REPLAY_OF_HEADER

NOW = 1_793_200_000_000


def _dl(offset: int, kind: str = "UNKNOWN_SCHEMA", topic: str = "p.interaction-events", at: int = NOW) -> Any:
    return build_dead_letter(topic, 0, offset, b"k", b"\x00\x00\x00\x00\x09x", [("origin", b"svc")], kind, "m", at)


def test_times_are_iso_or_a_span_ago() -> None:
    assert parse_time("2h", NOW) == NOW - 2 * 3600 * 1000
    assert parse_time("7d", NOW) == NOW - 7 * 86400 * 1000
    assert parse_time("2026-01-01T00:00:00", NOW) == 1_767_225_600_000
    assert parse_time("2026-01-01T01:00:00+01:00", NOW) == 1_767_225_600_000
    with pytest.raises(click.BadParameter):
        parse_time("yesterday", NOW)


def test_selection_filters_and_skips_what_was_replayed() -> None:
    dead = [_dl(1), _dl(2, kind="VALIDATION"), _dl(3, topic="p.credit-grants"), _dl(4, at=NOW - 10_000), _dl(1)]
    everything = DeadLetterFilter()
    # In source order: by topic, partition, offset.
    assert [d["source_offset"] for d in to_replay(dead, set(), everything)] == [3, 1, 2, 4]
    assert [d["source_offset"] for d in to_replay(dead, {"p.interaction-events:0:1"}, everything)] == [3, 2, 4]
    only = DeadLetterFilter(kinds=frozenset({"UNKNOWN_SCHEMA"}), topics=frozenset({"p.interaction-events"}),
                            since_ms=NOW - 5_000)
    assert [d["source_offset"] for d in to_replay(dead, set(), only)] == [1]
    assert [d["source_offset"] for d in to_replay(dead, set(), DeadLetterFilter(until_ms=NOW))] == [4]


def test_a_replayed_record_keeps_its_headers_and_names_its_dead_letter() -> None:
    headers = replay_headers(_dl(5))
    assert headers == [("origin", b"svc"), (REPLAY_OF_HEADER, b"p.interaction-events:0:5")]
