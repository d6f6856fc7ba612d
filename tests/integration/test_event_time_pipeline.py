"""Event time through the real pipeline: labelled traffic over six input partitions, sent to Kafka
as one backlog and read by a processor, gives the alerts the processor's own code gives the same
traffic sent paced (a batch per ten minutes of event time, a timer tick after each). The
fingerprint rules, whose observations come from every partition, are where a backlog read
partition by partition would otherwise differ."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streams.cli.evaluate import _run_pipeline
from streams.detection.rules.base import MINUTE_MS
from streams.runtime.topics import ensure_topics
from streams.settings import Role, Settings
from streams.synthetic.in_process import FP_PARTITIONS, run_in_process
from streams.synthetic.patterns import build_randomised

pytestmark = pytest.mark.integration


def _finding(a: dict[str, Any]) -> tuple[Any, ...]:
    return (a["alert_id"], a["dedup_key"], a["severity"], a["score"], a["observed"], a["limit"],
            a["window_start"], a["window_end"], a["firings"], repr(sorted(a["evidence"]["counts"].items())),
            repr(sorted(a["evidence"]["credits_by_category"].items())), tuple(a["evidence"]["sample_event_ids"]),
            tuple(a["related_entities"]), tuple(a["counter_signals"]))


def test_a_backlog_through_kafka_gives_the_alerts_of_paced_traffic(topic_settings: Settings) -> None:
    traffic = build_randomised(7, gamers=(1, 1), decoys=(1, 1), background_accounts=40)
    paced = run_in_process(traffic, paced=True, pace_ms=10 * MINUTE_MS, partitions=FP_PARTITIONS)
    assert paced.batches > 50

    settings = topic_settings.model_copy(update={"role": Role.PROCESSOR, "partitions": FP_PARTITIONS,
                                                 "process_batch": 1000})
    bootstrap = settings.kafka_bootstrap_servers or ""
    asyncio.run(ensure_topics(bootstrap, settings))
    latest, _firings, _usage, emitted = asyncio.run(_run_pipeline(settings, bootstrap, traffic, 300, print))

    fingerprint_alerts = [a for a in latest if a["entity_type"] != "account"]
    assert fingerprint_alerts, "the traffic makes fingerprint rules fire"
    assert emitted >= len(latest)
    assert sorted(map(_finding, latest)) == sorted(map(_finding, paced.latest))
