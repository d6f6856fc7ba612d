"""The partitioning contract, enforced: an account is metered only on the partition that owns it.

The owner of an account on an input topic is ``murmur2(account id) % partitions``, what Kafka's Java
client and aiokafka's default partitioner give a record keyed by the account id. The meter decodes
every record and hands back, instead of applying them, the valid ones that sit on another partition
(a null key, another key, another partitioner such as librdkafka's CRC32 default). They are
forwarded here: the original bytes and headers, keyed by the account id, to the owner partition.

The forward goes to the owner partition of the *same* input topic. The owner then reads the copy in
the one ordered stream it meters that partition from, so everything downstream that relies on one
input partition feeding one output partition in order (the meter's replay guard, the offset stamp
the sink's replay guard reads) holds for forwarded records unchanged; a second input topic merged
into the same account state and output partition would break both. A forwarded copy carries the
``creditflow-forwarded-from`` header (origin partition and offset): raw consumers of the input topic
skip records that carry it or the originals that lack it, and the owner applies one copy per origin
(``streams.credits.meter.first_forward``). The origin's offset is committed only after its forwards
are acknowledged, like every other output of a batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from streams.runtime.batch_send import KeyPartitions, Outgoing
from streams.wire.headers import FORWARDED_FROM_HEADER, forwarded_from_header


class Owners:
    """Owner partitions per input topic (cached murmur2)."""

    def __init__(self, partitions: dict[str, int]) -> None:
        self.by_topic = {topic: KeyPartitions(n) for topic, n in partitions.items()}

    def of(self, topic: str) -> KeyPartitions:
        return self.by_topic[topic]

    def lookup(self, topic: str) -> Any:
        """account id -> owner partition on ``topic``."""
        parts = self.by_topic[topic]
        return lambda account: parts(account.encode())


def forwards(records: Iterable[tuple[Any, str]], parts: KeyPartitions) -> dict[int, list[Outgoing]]:
    """Outgoing copies of misplaced records, by owner partition: original value and headers, the
    account id as key, and where the original was read."""
    by_partition: dict[int, list[Outgoing]] = {}
    for rec, account in records:
        key = account.encode()
        headers = [(k, v) for k, v in _headers(rec.headers) if k != FORWARDED_FROM_HEADER]
        headers.append(forwarded_from_header(rec.partition, rec.offset))
        by_partition.setdefault(parts(key), []).append((key, rec.value, headers))
    return by_partition


def _headers(headers: Sequence[tuple[str, bytes]] | None) -> Iterable[tuple[str, bytes]]:
    return headers or ()
