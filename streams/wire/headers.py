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
