"""Every Prometheus metric a worker exports, in one place, and the ``/metrics`` endpoint.

Each faust.App gets its own ``CollectorRegistry`` (``metrics_of(app)``), so several apps in one
test process never collide on a metric name. The services report once per batch (never per
event): a counter increment per batch costs nothing next to the batch itself. Values that are
cheap to read but pointless to push (consumer lag, state sizes, seconds since the last batch) are
gathered when Prometheus scrapes.

Names follow the Prometheus conventions: ``creditflow_`` prefix, base units (seconds, bytes),
``_total`` on counters (added by prometheus_client), labels for small fixed domains only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import faust
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("creditflow.metrics")

# Batches take milliseconds to seconds; a store can take tens of seconds while ClickHouse struggles.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# How long a scrape may wait for the broker's end offsets before reporting lag as unknown.
LAG_TIMEOUT_S = 3.0
# Model names come from clients: past this many distinct unpriced models, the rest share one series
# (the warning in the log and `creditflow report` still name each).
UNPRICED_MODELS_MAX = 50
UNPRICED_OTHER = "_other"


class _Consumer(Protocol):
    def assignment(self) -> set[Any]: ...
    async def end_offsets(self, partitions: list[Any]) -> dict[Any, int]: ...
    async def position(self, partition: Any) -> int: ...


class _Sized(Protocol):
    name: str

    def sizes(self) -> dict[str, int]: ...


@dataclass
class GroupProgress:
    """What readiness and lag need to know about one consumer group of this worker."""

    # The group's consumer, once its service has started (None before).
    source: Callable[[], _Consumer | None] = lambda: None
    # None until the group's first assignment: a worker that never joined is not ready.
    assigned: frozenset[tuple[str, int]] | None = None
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    last_poll: float = 0.0  # time.monotonic()
    last_batch: float = 0.0


class Metrics:
    """The metric families of one worker, and the calls its services make once per batch."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_start_time_seconds: restarts are its changes()
        self.events_consumed = Counter("creditflow_events_consumed",
                                       "Records read from input topics, by consumer group",
                                       ["group", "topic"], registry=r)
        self.events_metered = Counter("creditflow_events_metered", "Interaction events metered and published",
                                      registry=r)
        self.duplicates = Counter("creditflow_duplicates_skipped",
                                  "Input events skipped because their account state already applied them "
                                  "(a replayed batch or a resent event)", registry=r)
        self.dead_letters = Counter("creditflow_dead_letters", "Inputs sent to dead-letters, by error kind",
                                    ["kind"], registry=r)
        self.unpriced = Counter("creditflow_unpriced_events", "Interaction events metered at the policy's "
                                "'*' fallback price because their model is not in its price table, by model",
                                ["model"], registry=r)
        self.alerts = Counter("creditflow_alerts", "Gaming-alert emissions (an alert is re-emitted as it "
                              "accumulates firings)", ["rule", "severity"], registry=r)
        self.batch_seconds = Histogram("creditflow_batch_duration_seconds", "Wall time of one processor batch, "
                                       "from fetched records to committed offsets", registry=r,
                                       buckets=LATENCY_BUCKETS)
        self.publish_seconds = Histogram("creditflow_publish_duration_seconds", "Time to begin a batch's "
                                         "transactions and hand its outputs and state records to the producers",
                                         registry=r,
                                         buckets=LATENCY_BUCKETS)
        self.state_write_seconds = Histogram("creditflow_state_write_duration_seconds", "Time until a batch's "
                                             "outputs and state are acknowledged and its transactions committed",
                                             registry=r,
                                             buckets=LATENCY_BUCKETS)
        self.batch_events = Histogram("creditflow_batch_events", "Interaction events per processor batch",
                                      registry=r, buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 20000, 50000))
        self.sink_store_seconds = Histogram("creditflow_sink_store_duration_seconds", "Time to store one sink "
                                            "batch in ClickHouse (plans and every table insert)", registry=r,
                                            buckets=LATENCY_BUCKETS)
        self.sink_rows = Counter("creditflow_sink_rows", "Rows inserted into ClickHouse, by table", ["table"],
                                 registry=r)
        self.sink_replays_dropped = Counter("creditflow_sink_replays_dropped", "Replayed records the sink "
                                            "recognised and did not insert again", registry=r)
        self.sink_retries = Counter("creditflow_sink_retries", "Failed ClickHouse stores that will be retried",
                                    registry=r)
        self.sink_failing = Gauge("creditflow_sink_failing", "1 while the last ClickHouse store failed", registry=r)
        self.rebalances = Counter("creditflow_rebalances", "Partition assignments received, by consumer group",
                                  ["group"], registry=r)
        self.assigned_partitions = Gauge("creditflow_assigned_partitions", "Partitions assigned to this worker",
                                         ["group"], registry=r)
        self.consumer_lag = Gauge("creditflow_consumer_lag", "Records in a partition after this worker's last "
                                  "committed offset (its position before the first commit)",
                                  ["topic", "partition", "group"], registry=r)
        self.last_batch_age = Gauge("creditflow_last_batch_age_seconds", "Seconds since the group's last "
                                    "committed batch (since start when none yet)", ["group"], registry=r)
        self.state_keys = Gauge("creditflow_state_keys", "Keys in a state table: decoded in memory (hot) or "
                                "estimated in the local store", ["table", "tier"], registry=r)
        self.state_disk_bytes = Gauge("creditflow_state_disk_bytes", "Bytes of a state table's local store",
                                      ["table"], registry=r)
        self.event_loop_lag = Gauge("creditflow_event_loop_lag_seconds", "How late the event loop ran a timer "
                                    "last time (a blocked loop delays every batch and probe)", registry=r)
        self.ready = Gauge("creditflow_ready", "1 when /ready passes (as of the last scrape)", registry=r)
        self.started_at = time.monotonic()
        # Run before each scrape (the readiness gauge).
        self.before_scrape: list[Callable[[], Awaitable[None]]] = []
        self.groups: dict[str, GroupProgress] = {}
        self.tables: list[_Sized] = []
        self.sink_error = ""
        self.sink_stored_at = 0.0  # time.monotonic() of the last successful store

    # -- calls from the services (once per batch or per rebalance) ---------------------------------

    def group(self, group: str) -> GroupProgress:
        return self.groups.setdefault(group, GroupProgress())

    def watch(self, group: str, source: Callable[[], _Consumer | None]) -> None:
        """Readiness and lag follow ``group``, whose consumer ``source`` returns once it exists."""
        self.group(group).source = source

    def watch_tables(self, tables: Iterable[_Sized]) -> None:
        self.tables.extend(tables)

    def assigned(self, group: str, partitions: Iterable[Any]) -> None:
        """A rebalance handed ``partitions`` (TopicPartitions) to this worker: its whole assignment."""
        progress = self.group(group)
        progress.assigned = frozenset((tp.topic, tp.partition) for tp in partitions)
        progress.committed = {k: v for k, v in progress.committed.items() if k in progress.assigned}
        self.rebalances.labels(group).inc()
        self.assigned_partitions.labels(group).set(len(progress.assigned))

    def committed(self, group: str, offsets: Mapping[Any, Any]) -> None:
        """Offsets (TopicPartition -> offset or OffsetAndMetadata) this worker just committed."""
        progress = self.group(group)
        progress.last_batch = time.monotonic()
        for tp, offset in offsets.items():
            progress.committed[(tp.topic, tp.partition)] = getattr(offset, "offset", offset)

    def consumed(self, group: str, fetched: Mapping[Any, Sequence[Any]]) -> None:
        """A poll returned ``fetched`` (TopicPartition -> records): counted per topic."""
        progress = self.group(group)
        progress.last_poll = time.monotonic()
        per_topic: Tally[str] = Tally()
        for tp, records in fetched.items():
            per_topic[tp.topic] += len(records)
        for topic, n in per_topic.items():
            self.events_consumed.labels(group, topic).inc(n)

    def dead_lettered(self, dead: Iterable[Mapping[str, Any]]) -> None:
        """Dead letters published (the processor's for its inputs, the sink's for inputs only it reads)."""
        for kind, n in Tally(d["error_kind"] for d in dead).items():
            self.dead_letters.labels(kind).inc(n)

    def processor_batch(self, *, events: int, metered: int, skipped: int, dead: Iterable[Mapping[str, Any]],
                        alerts: Iterable[tuple[str, Mapping[str, Any]]], started: float,
                        write_phases: Sequence[float], unpriced: Mapping[str, int] | None = None) -> None:
        """One processor batch: counts, its ``time.perf_counter()`` start, the seconds of the
        checkpoint's phases (begin, send, acknowledged, commit; ``Checkpoint.last_phases``), and
        events priced at the fallback by model (``MeterResult.unpriced``)."""
        self.events_metered.inc(metered)
        for model, n in (unpriced or {}).items():
            self.unpriced.labels(self._unpriced_label(model)).inc(n)
        if skipped:
            self.duplicates.inc(skipped)
        self.dead_lettered(dead)
        for (rule, severity), n in Tally((a["rule_id"], a["severity"]) for _, a in alerts).items():
            self.alerts.labels(rule, severity).inc(n)
        self.batch_events.observe(events)
        if len(write_phases) == 4:
            begin, send, acknowledged, commit = write_phases
            self.publish_seconds.observe(begin + send)
            self.state_write_seconds.observe(acknowledged + commit)
        self.batch_seconds.observe(time.perf_counter() - started)

    def _unpriced_label(self, model: str) -> str:
        known = _label_sets(self.unpriced)
        if (model,) in known or len(known) < UNPRICED_MODELS_MAX:
            return model
        return UNPRICED_OTHER

    def alerts_flushed(self, alerts: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        for (rule, severity), n in Tally((a["rule_id"], a["severity"]) for _, a in alerts).items():
            self.alerts.labels(rule, severity).inc(n)

    def sink_stored(self, counts: Mapping[str, int], seconds: float) -> None:
        """A store landed: how long it took including retries, and its counts as the sink's store
        returns them (rows per table, plus two bookkeeping entries of its own)."""
        self.sink_store_seconds.observe(seconds)
        for table, n in counts.items():
            if table == "replays dropped":
                self.sink_replays_dropped.inc(n)
            elif table == "direct batches":
                continue
            else:
                self.sink_rows.labels(table).inc(n)
        self.sink_failing.set(0)
        self.sink_error = ""
        self.sink_stored_at = time.monotonic()

    def sink_recovered(self) -> None:
        """ClickHouse answered the sink again (reading its plans) before any store."""
        self.sink_failing.set(0)
        self.sink_error = ""

    def sink_failed(self, exc: BaseException) -> None:
        """A store (or reading the recorded plans) failed and will be retried."""
        self.sink_retries.inc()
        self.sink_failing.set(1)
        self.sink_error = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]

    # -- gathered on scrape ------------------------------------------------------------------------

    async def refresh(self) -> None:
        for hook in self.before_scrape:
            await hook()
        now = time.monotonic()
        for name, progress in self.groups.items():
            self.last_batch_age.labels(name).set(now - (progress.last_batch or self.started_at))
            await self._refresh_lag(name, progress)
        for table in self.tables:
            try:
                sizes = table.sizes()
            except Exception:  # a table closing under the scrape: report it next time
                continue
            self.state_keys.labels(table.name, "hot").set(sizes["hot_keys"])
            self.state_keys.labels(table.name, "stored").set(sizes["stored_keys_estimate"])
            self.state_disk_bytes.labels(table.name).set(sizes["disk_bytes"])

    async def _refresh_lag(self, group: str, progress: GroupProgress) -> None:
        consumer = progress.source()
        if consumer is None:
            return
        held = sorted(consumer.assignment(), key=lambda tp: (tp.topic, tp.partition))
        try:
            ends = await asyncio.wait_for(consumer.end_offsets(held), LAG_TIMEOUT_S) if held else {}
        except Exception as exc:  # the broker is away or a rebalance is under way: lag is unknown now
            log.debug("consumer lag of %s not refreshed: %r", group, exc)
            return
        for tp in held:
            end = ends.get(tp)
            if end is None:
                continue
            done = progress.committed.get((tp.topic, tp.partition))
            if done is None:
                try:
                    done = await asyncio.wait_for(consumer.position(tp), LAG_TIMEOUT_S)
                except Exception:
                    continue
            self.consumer_lag.labels(tp.topic, str(tp.partition), group).set(max(0, end - done))
        # Partitions that moved away keep no stale series.
        here = {(tp.topic, str(tp.partition)) for tp in held}
        for labels in list(_label_sets(self.consumer_lag)):
            topic, partition, g = labels
            if g == group and (topic, partition) not in here:
                self.consumer_lag.remove(topic, partition, g)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _label_sets(gauge: Gauge | Counter) -> list[tuple[str, ...]]:
    # prometheus_client keeps the children of a labelled metric in ``_metrics``, keyed by label values.
    children: dict[tuple[str, ...], Any] = getattr(gauge, "_metrics", {})
    return list(children)


def metrics_of(app: faust.App) -> Metrics:
    """The app's metrics, made on first use."""
    metrics: Metrics | None = getattr(app, "creditflow_metrics", None)
    if metrics is None:
        metrics = Metrics()
        app.creditflow_metrics = metrics  # type: ignore[attr-defined]
    return metrics


def metrics_handler(metrics: Metrics) -> Any:
    async def handle(request: web.Request) -> web.Response:
        await metrics.refresh()
        # The header verbatim: Prometheus reads the format version from it.
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle
