"""Kafka headers creditflow puts on the records it produces (a wire contract, like the schemas)."""

from __future__ import annotations

from collections.abc import Iterable

# On every usage-enriched record: the input offset it was metered from, 8 bytes big-endian. The
# sink's replay guard reads it here, so it can hand record bodies to ClickHouse undecoded.
SOURCE_OFFSET_HEADER = "creditflow-source-offset"


def source_offset_header(offset: int) -> tuple[str, bytes]:
    return SOURCE_OFFSET_HEADER, offset.to_bytes(8, "big", signed=True)


def source_offset(headers: Iterable[tuple[str, bytes | None]] | None) -> int | None:
    """The stamped input offset, or None when the record has no (well-formed) stamp."""
    for key, value in headers or ():
        if key == SOURCE_OFFSET_HEADER and value is not None and len(value) == 8:
            return int.from_bytes(value, "big", signed=True)
    return None


# On a record forwarded to the partition that owns its account: the partition and offset it was
# read at on the same topic (4 + 8 bytes big-endian). The owner drops copies of one it has applied.
FORWARDED_FROM_HEADER = "creditflow-forwarded-from"


def forwarded_from_header(partition: int, offset: int) -> tuple[str, bytes]:
    return FORWARDED_FROM_HEADER, partition.to_bytes(4, "big", signed=True) + offset.to_bytes(8, "big", signed=True)


def forwarded_from(headers: Iterable[tuple[str, bytes | None]] | None) -> tuple[int, int] | None:
    """(origin partition, origin offset) of a forwarded record, None for any other."""
    for key, value in headers or ():
        if key == FORWARDED_FROM_HEADER and value is not None and len(value) == 12:
            return int.from_bytes(value[:4], "big", signed=True), int.from_bytes(value[4:], "big", signed=True)
    return None


# On a dead letter's original re-submitted by ``creditflow dead-letters replay``: the dead-letter id.
REPLAY_OF_HEADER = "creditflow-replay-of"
