"""Input offsets to commit past transaction markers.

A transactional producer upstream (``creditflow dead-letters replay`` is one) leaves a control
marker after its records. Consumers never receive it, so a batch ending at the last record would
commit one short of the partition's end for good (a lag of one that never drains). Right after a
batch is fetched, the consumer's position is past every marker and aborted record that follows the
batch's last record and nothing else (no other fetch ran since), so committing the position when it
is further is exact.
"""

from __future__ import annotations

from typing import Any

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


def known_position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The consumer's position in ``tp`` if it holds a valid one now, without waiting (``position``
    waits for a reset, a round trip to the group coordinator, which a loop running while Kafka is
    away must not do); None when ``tp`` is not assigned or has no position yet. aiokafka keeps
    positions in its subscription state and publishes only the waiting call."""
    subscription: Any = getattr(getattr(consumer, "_subscription", None), "subscription", None)
    assignment = getattr(subscription, "assignment", None)
    if assignment is None or tp not in assignment.tps:
        return None
    state = assignment.state_value(tp)
    return int(state.position) if state.has_valid_position else None
