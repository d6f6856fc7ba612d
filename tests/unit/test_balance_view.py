"""BalanceView's staleness on a topic that is never quiet, and after a broker error: with a fake
consumer (no broker), driven through the view's own read loop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError

from streams.balance_view import BalanceView

TP = TopicPartition("credit-balances", 0)


@dataclass
class _Record:
    value: bytes | None = None


class _BusyTopic:
    """Two records arrive per fetch, and one more between every fetch and the next look at the end:
    the view is never exactly at the end when it looks, yet never more than a record behind."""

    def __init__(self, fail_first_end_check: bool) -> None:
        self.pos = 0
        self.fail = fail_first_end_check

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[_Record]]:
        await asyncio.sleep(0.02)
        self.pos += 2
        return {TP: [_Record(), _Record()]}

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        if self.fail:
            self.fail = False
            raise KafkaTimeoutError("broker away")
        return {tp: self.pos + 1 for tp in tps}

    async def position(self, tp: Any) -> int:
        return self.pos


def _run_view(consumer: _BusyTopic, seconds: float) -> BalanceView:
    async def run() -> BalanceView:
        view = BalanceView(bootstrap_servers="unused:9092")
        view._consumer = consumer  # type: ignore[assignment]
        view._tps = [TP]
        task = asyncio.create_task(view._run())
        await asyncio.wait_for(view.wait_caught_up(), 5)
        await asyncio.sleep(seconds)
        assert not task.done(), task
        task.cancel()
        return view

    return asyncio.run(run())


def test_a_busy_topic_is_caught_up_to_and_staleness_stays_small() -> None:
    view = _run_view(_BusyTopic(fail_first_end_check=False), 1.0)
    stale = view.staleness()
    assert stale.seconds < 1.0, stale  # the view holds everything that was there a moment ago
    assert 0 <= stale.lag <= 3, stale


def test_a_failed_look_at_the_end_does_not_stop_the_view() -> None:
    view = _run_view(_BusyTopic(fail_first_end_check=True), 1.0)
    assert view.staleness().seconds < 1.0 and view.records_read > 20
