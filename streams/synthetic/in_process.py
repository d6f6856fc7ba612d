"""A labelled scenario set through the code the processor runs, in this process: the meter
(``streams/credits/meter.py``) and detection (``streams/detection/engine.py``), fed Avro records as
the processor's consumer would give them, with no broker. What differs from the processor is only
I/O: state stays in the tables' memory and alerts are collected instead of published.

Two ways to send the same input, which must give the same alerts (detection runs in event time):
- ``paced=False``: one backlog, read in batches of ``batch_size`` with no timer tick in between;
- ``paced=True``: the traffic as it happens, one batch per ``pace_ms`` of event time, with a timer
  tick (``Detection.evaluate_quiet``) after each.
Either way the quiet entities' last findings are evaluated at the end, as the timer would.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.credits.meter import Meter, RawRecord
from streams.credits.policy import load_policy
from streams.detection.engine import Detection, DetectionBatch
from streams.detection.rules.base import Firing
from streams.runtime.batch_send import KeyPartitions
from streams.runtime.topics import topic_names
from streams.settings import Settings
from streams.synthetic.scenarios import ScenarioSet
from streams.wire.codec import Decoder, encode_single_object

FP_PARTITIONS = 6


@dataclass
class InProcessRun:
    alerts: list[dict[str, Any]]  # every GamingAlert emission, in order
    firings: list[Firing]
    usage: dict[str, list[tuple[int, int]]]  # account -> [(occurred_at, charged_micro)] in order
    unknown_model_events: int
    dead_letters: int
    batches: int = 0
    latest: list[dict[str, Any]] = field(default_factory=list)  # one per alert id, its last emission


def latest_alerts(emitted: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One alert per alert id: its newest emission (most firings, then latest last_seen_at)."""
    best: dict[str, dict[str, Any]] = {}
    for a in emitted:
        cur = best.get(a["alert_id"])
        if cur is None or (a["firings"], a["last_seen_at"]) >= (cur["firings"], cur["last_seen_at"]):
            best[a["alert_id"]] = a
    return list(best.values())


def _batches(events: Sequence[dict[str, Any]], batch_size: int, paced: bool, pace_ms: int
             ) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    """(offset, event) batches in input order: by count, or by ``pace_ms`` windows of event time."""
    batch: list[tuple[int, dict[str, Any]]] = []
    window = None
    for offset, ev in enumerate(events):
        w = ev["occurred_at"] // pace_ms if paced else None
        if batch and (len(batch) >= batch_size or (paced and w != window)):
            yield batch
            batch = []
        window = w
        batch.append((offset, ev))
    if batch:
        yield batch


def run_in_process(scenarios: ScenarioSet, *, policy_path: Path | None = None, paced: bool = False,
                   batch_size: int = 2000, pace_ms: int = 5 * 60_000, data_dir: Path | None = None,
                   partitions: int = 1) -> InProcessRun:
    """Meter and watch ``scenarios`` (events in their order, on one input partition) as the
    processor would, under the policy at ``policy_path`` (the default policy when None). Grants are
    applied first, as the evaluation's pipeline path produces them. With ``partitions`` > 1 accounts
    are spread as Kafka's partitioner spreads them and each batch is read partition by partition, as
    a consumer's fetch returns it."""
    policy = load_policy(policy_path)
    with tempfile.TemporaryDirectory(prefix="creditflow-eval-") as tmp:
        settings = Settings(data_dir=data_dir or Path(tmp), policy_path=policy_path)
        detection = Detection(settings, topic_names(settings))
        detection.fp_partitions = KeyPartitions(FP_PARTITIONS)
        detection.source_partitions = partitions
        sources = range(partitions)
        detection.record_firings = []
        every_fp_partition = set(range(FP_PARTITIONS))
        where = KeyPartitions(partitions) if partitions > 1 else None
        offsets: dict[int, int] = {}
        meter = Meter(policy, Decoder("InteractionEvent"), Decoder("CreditGrant"))
        end = scenarios.end_ms
        usage_state: dict[str, dict[str, Any]] = {}
        grants_state: dict[str, dict[str, Any]] = {}
        emitted: list[dict[str, Any]] = []
        usage: dict[str, list[tuple[int, int]]] = defaultdict(list)
        dead = unknown = batches = 0

        def publish(found: DetectionBatch) -> None:
            emitted.extend(alert for _entity, alert in found.alerts)

        grant_records = [RawRecord("credit-grants", 0, i, g["account_id"].encode(),
                                   encode_single_object(g, "CreditGrant")) for i, g in enumerate(scenarios.grants)]
        granted = meter.grants(grant_records, grants_state.get, end)
        dead += len(granted.dead_letters)
        for account, (_p, state) in granted.grant_updates.items():
            grants_state[account] = state
        found = DetectionBatch()
        detection.on_grants(found, granted.accepted_grants)
        publish(found)
        for batch in _batches(scenarios.events, batch_size, paced, pace_ms):
            records = []
            for offset, ev in batch:
                key = ev["account_id"].encode()
                partition = where(key) if where else 0
                offsets[partition] = offsets.get(partition, -1) + 1
                records.append(RawRecord("interaction-events", partition, offsets[partition] if where else offset,
                                         key, encode_single_object(ev, "InteractionEvent")))
            records.sort(key=lambda r: r.partition)
            metered = meter.meter(records, usage_state.get, grants_state.get, end)
            dead += len(metered.dead_letters)
            for account, (_p, state) in metered.usage_updates.items():
                usage_state[account] = state
            for rec in metered.enriched:
                usage[rec["account_id"]].append((rec["occurred_at"], rec["charged_micro"]))
            unknown += sum(metered.unpriced.values())
            found = DetectionBatch()
            detection.on_metered(found, metered.enriched, every_fp_partition)
            if paced:
                detection.tick(found, sources, every_fp_partition)
                detection.evaluate_quiet(found)
            publish(found)
            batches += 1
        found = DetectionBatch()
        detection.tick(found, sources, every_fp_partition, all_idle=True)
        detection.evaluate_quiet(found, force=True)
        publish(found)
        for table in detection.tables:
            table.close()
    return InProcessRun(alerts=emitted, firings=list(detection.record_firings), usage=dict(usage),
                        unknown_model_events=unknown, dead_letters=dead, batches=batches,
                        latest=latest_alerts(emitted))
