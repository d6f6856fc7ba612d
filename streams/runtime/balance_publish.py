"""Publishing a batch's balances and notifications (``streams/credits/balances.py`` computes them).

Both go to the partition number of their account's input partition: credit-balances is compacted and
keyed by account, so one account's balances must stay in one partition in order, and the partition
that owns an account in the processor group is then the one holding its balance.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer

from streams.credits.balances import BalanceBatch
from streams.runtime.batch_send import Outgoing, send_partitioned
from streams.runtime.topics import CREDIT_BALANCES, CREDIT_NOTIFICATIONS
from streams.wire.codec import encode_single_object


async def send_balances(producer: AIOKafkaProducer, names: Mapping[str, str],
                        batch: BalanceBatch) -> list[Awaitable[Any]]:
    """Queue the batch's records; returns the delivery futures to await with the batch's other outputs."""
    balances: dict[int, list[Outgoing]] = {}
    for partition, rec in batch.balances:
        balances.setdefault(partition, []).append(
            (rec["account_id"].encode(), encode_single_object(rec, "CreditBalance"), []))
    notes: dict[int, list[Outgoing]] = {}
    for partition, note in batch.notifications:
        notes.setdefault(partition, []).append(
            (note["account_id"].encode(), encode_single_object(note, "CreditNotification"), []))
    return [*await send_partitioned(producer, names[CREDIT_BALANCES], balances),
            *await send_partitioned(producer, names[CREDIT_NOTIFICATIONS], notes)]
