"""Writing Faust table entries from batch agents.

Faust picks a changelog partition from the *current* event, which inside ``stream.take_events()``
is just the last event of the batch, not the one that touched the key. Writing the store and the
changelog explicitly keeps every key in the partition of the input that owns it, so recovery after
a rebalance restores it on the right worker.
"""

from __future__ import annotations

from typing import Any

from faust.types import TableT


def put(table: TableT, partition: int, key: str, value: Any) -> None:
    table.data[key] = value
    table.send_changelog(partition, key, value)


def get(table: TableT, key: str) -> Any:
    return table.data.get(key)
