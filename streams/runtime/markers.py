"""Input offsets to commit past transaction markers.

A transactional producer upstream (``creditflow dead-letters replay`` is one) leaves a control
marker after its records. Consumers never receive it, so a batch ending at the last record would
commit one short of the partition's end for good (a lag of one that never drains). Right after a
batch is fetched, the consumer's position is past every marker and aborted record that follows the
batch's last record and nothing else (no other fetch ran since), so committing the position when it
is further is exact.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError


async def past_markers(consumer: AIOKafkaConsumer, offsets: dict[int, dict[TopicPartition, int]]
                       ) -> dict[int, dict[TopicPartition, int]]:
    for by_tp in offsets.values():
        for tp, end in by_tp.items():
            try:
                position = await consumer.position(tp)
            except IllegalStateError:  # no longer assigned: its transaction is fenced anyway
                continue
            if position > end:
                by_tp[tp] = position
    return offsets
