"""The detector role: credit-gaming rules over the metered stream, alerts on ``gaming-alerts``.

A ``mode.Service`` with its own aiokafka consumer, built like ``streams/processor.py`` (read that
first): batches from ``getmany``, state in changelog-backed tables, and per batch
1. inputs are decoded and folded into in-memory state (grants, reviews, metered events, then
   fingerprint observations);
2. outputs (GamingAlert records, fingerprint observations for the repartition) are published and
   acknowledged;
3. the touched state is written to its changelog and acknowledged;
4. only then are the input offsets committed.

Inputs, all read by the consumer group ``{app_id}-detector`` with the Range assignor (partition i of
every topic goes to the same worker):
- ``usage-enriched`` and ``credit-grants``, keyed by account id: per-account rules;
- ``{prefix}detector-fingerprints``, keyed by the fingerprint hash: the repartition. Every metered
  event that carries a device/payment/prompt fingerprint (and a rule watches that kind) is
  re-published here as JSON ``{"k": kind, "sp": source partition, "so": source offset, "obs": ...}``
  so one worker sees every account behind one fingerprint;
- ``gaming-reviews``, keyed by the alert's *entity id* (``creditflow alerts review`` does so): the
  account id for account alerts, the fingerprint hash for fingerprint alerts. With the same partition
  count and the default (murmur2) partitioner a review lands on the partition number that holds the
  entity's alert state, in this same worker. A review keyed otherwise is still applied, to state
  kept under the review's partition, but will not meet the entity's open alerts.

State (JSON, see ``streams/tables.py``):
- accounts: account id -> ``{"d": detector state, "o": last usage-enriched offset applied}``;
- fingerprints: ``kind|fp`` -> ``{"d": detector state, "o": {source partition: last offset}}``;
- alerts: ``entity_type|entity_id`` -> ``streams.alerts`` state (open alerts, suppression, verdicts).

Replays: the offsets in the account and fingerprint state make a replayed batch skip what was
applied (so a fingerprint observation re-published by a replay is not counted twice); alert ids are
deterministic in their dedup key, so an alert re-emitted by a replay replaces itself at the sink.

A wall-clock timer (``CREDITFLOW_DETECTOR_FLUSH_SECONDS``, 30 s) evaluates entities touched since
the last flush (at most ``_FLUSH_MAX`` per tick) at their last event time: a quiet account's
findings would otherwise wait for its next event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

import faust
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from mode import Service

from streams.alerts import apply_review, new_alert_state, process_firing, to_avro
from streams.batch_send import KeyPartitions, Outgoing, send_partitioned
from streams.codec import DecodeError, Decoder, SchemaRegistryClient, encode_single_object
from streams.detectors.base import Firing
from streams.detectors.engine import FINGERPRINT_FIELDS, DetectorEngine
from streams.partitioned import Fetched, PartitionedService
from streams.policy import load_policy
from streams.settings import Settings
from streams.tables import ChangelogTable

log = logging.getLogger("creditflow.detection")
FINGERPRINTS_TOPIC = "detector-fingerprints"
_FLUSH_MAX = 5_000  # entities evaluated per timer tick: keeps a tick's pause bounded
_RECENT_MAX = 50_000  # touched entities remembered for the timer; the oldest are forgotten
# The observation the engine expects, taken from a UsageEnriched record (debits are rebuilt).
_OBS_FIELDS = ("event_id", "account_id", "occurred_at", "plan", "category", "model", "outcome", "error_code",
               "input_tokens", "output_tokens", "context_window_tokens", "context_uniqueness",
               "reasoning_steps", "thinking_tokens", "tool_calls", "list_micro", "charged_micro",
               "grant_funded_micro", "ip_hash", "device_hash", "payment_hash", "prompt_fingerprint")




def observation(rec: Mapping[str, Any]) -> dict[str, Any]:
    """UsageEnriched record -> the observation ``DetectorEngine.observe_account`` takes."""
    obs = {k: rec.get(k) for k in _OBS_FIELDS}
    obs["debits"] = [(d["grant_id"], d["amount_micro"], d["balance_after_micro"]) for d in rec["debits"]]
    return obs


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def wire_alert(alert: Mapping[str, Any]) -> dict[str, Any]:
    """The GamingAlert as the schema promises it: ``observed`` and ``limit`` are exact decimal strings
    (the sink stores them as numbers). Rules phrase them for humans ("22 active hours of 24", "CV <=
    0.25"); the rule's measure is the first number of the phrase."""
    out = to_avro(alert)
    for field in ("observed", "limit"):
        m = _NUMBER.search(str(out.get(field, "")))
        out[field] = m.group(0) if m else "0"
    return out


def alert_state_key(entity_type: str, entity_id: str) -> str:
    return f"{entity_type}|{entity_id}"


class _Batch:
    """What one batch (or one timer flush) changed and must publish."""

    def __init__(self) -> None:
        self.alerts: list[tuple[str, dict[str, Any]]] = []  # (entity id key, GamingAlert)
        self.fingerprints: list[tuple[str, bytes]] = []  # (fingerprint, JSON observation)
        self.accounts: dict[str, int] = {}  # key -> partition of touched state
        self.fps: dict[str, int] = {}
        self.alert_states: dict[str, int] = {}


class Detector(PartitionedService):
    logger = log

    def __init__(self, settings: Settings, bootstrap: str, names: Mapping[str, str], **kwargs: Any) -> None:
        app_id = settings.app_id
        accounts = ChangelogTable("detector-accounts", f"{app_id}-detector-accounts-changelog", settings.partitions)
        fingerprints = ChangelogTable("detector-fingerprints", f"{app_id}-detector-fingerprints-changelog",
                                      settings.partitions)
        alert_states = ChangelogTable("detector-alerts", f"{app_id}-detector-alerts-changelog", settings.partitions)
        super().__init__(settings, bootstrap, f"{app_id}-detector", (accounts, fingerprints, alert_states), **kwargs)
        self.accounts, self.fingerprints, self.alert_states = accounts, fingerprints, alert_states
        self.names = names
        self.engine = DetectorEngine(policy=load_policy(settings.policy_path))
        # Fingerprint kinds some rule watches: only those are repartitioned.
        self.fp_kinds = {k: f for k, f in FINGERPRINT_FIELDS.items()
                         if any(k in d.entity_types for d in self.engine.detectors)}
        registry = SchemaRegistryClient(settings.schema_registry_url) if settings.schema_registry_url else None
        self.usage_decoder = Decoder("UsageEnriched", registry)
        self.grant_decoder = Decoder("CreditGrant", registry)
        self.review_decoder = Decoder("ReviewDecision", registry)
        self.usage_topic = names["usage-enriched"]
        self.grants_topic = names["credit-grants"]
        self.reviews_topic = names["gaming-reviews"]
        self.alerts_topic = names["gaming-alerts"]
        self.fp_topic = settings.topic(FINGERPRINTS_TOPIC)
        self.fp_partitions: KeyPartitions | None = None  # known once the producer has metadata
        # Touched since the last timer flush: key -> partition, oldest first.
        self.recent_accounts: OrderedDict[str, int] = OrderedDict()
        self.recent_fps: OrderedDict[str, int] = OrderedDict()
        self.flush_every = settings.detector_flush_seconds
        self.events = 0
        self.alerts_emitted = 0
        self.firings = 0
        self.undecodable = 0
        # The evaluation harness sets this to a list to see raw firings; None in production.
        self.record_firings: list[Firing] | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def input_topics(self) -> list[str]:
        return [self.grants_topic, self.reviews_topic, self.usage_topic, self.fp_topic]

    async def prepare(self) -> None:
        await self._ensure_fingerprint_topic()

    async def _ensure_fingerprint_topic(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            # Same partition count as the inputs: reviews keyed by a fingerprint must land on the
            # partition number that holds the fingerprint's alert state.
            await admin.create_topics([NewTopic(
                self.fp_topic, self.settings.partitions, self.settings.replication_factor,
                topic_configs={"retention.ms": str(self.settings.retention_hours * 3600 * 1000)})])
        except TopicAlreadyExistsError:
            pass
        finally:
            await admin.close()

    def on_release(self, partitions: set[int]) -> None:
        for recent in (self.recent_accounts, self.recent_fps):
            for key in [k for k, p in recent.items() if p in partitions]:
                del recent[key]

    # -- loops ------------------------------------------------------------------------------------

    @Service.task
    async def _timer(self) -> None:
        while not self.should_stop:
            await self.sleep(self.flush_every)
            if self.producer is None or self.should_stop:
                continue
            try:
                async with self.lock:
                    await self.flush(limit=_FLUSH_MAX)
            except Exception as exc:
                if self.should_stop:
                    return
                # Nothing to replay here (no input offsets), but state may be half-written: restart.
                self.die("detector flush", exc)

    # -- one batch --------------------------------------------------------------------------------

    async def process(self, fetched: Fetched) -> None:
        t0 = time.perf_counter()
        batch = _Batch()
        by_topic: dict[str, list[tuple[TopicPartition, Sequence[Any]]]] = {}
        for tp, records in fetched.items():
            by_topic.setdefault(tp.topic, []).append((tp, records))
        # Grants first (their dates inform this batch's events), reviews next (a verdict applies to
        # firings that follow it), then events and the fingerprint observations.
        for tp, records in by_topic.get(self.grants_topic, ()):
            for r in records:
                self._on_grant(batch, tp.partition, r.value)
        for tp, records in by_topic.get(self.reviews_topic, ()):
            for r in records:
                self._on_review(batch, tp.partition, r.value)
        for tp, records in by_topic.get(self.usage_topic, ()):
            for r in records:
                self._on_usage(batch, tp.partition, r.offset, r.value)
        for tp, records in by_topic.get(self.fp_topic, ()):
            for r in records:
                self._on_fingerprint(batch, tp.partition, r.key, r.value)
        t1 = time.perf_counter()
        await self._publish_and_write(batch)
        await self.commit(fetched)
        log.debug("detector batch: %d records, %d alerts, %d fingerprint obs: fold %.1f ms, io %.1f ms",
                  sum(len(r) for r in fetched.values()), len(batch.alerts), len(batch.fingerprints),
                  (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3)

    def _decode(self, decoder: Decoder, value: bytes | None) -> dict[str, Any] | None:
        if value is None:
            return None
        try:
            return decoder.decode(value)
        except DecodeError as exc:
            # Our inputs are the processor's outputs or already validated; an unreadable one is
            # logged and skipped rather than stopping the partition (the processor owns dead letters).
            self.undecodable += 1
            log.warning("skipping an undecodable record: %s", exc)
            return None

    def _account(self, batch: _Batch, partition: int, account_id: str) -> dict[str, Any]:
        wrapper = self.accounts.get(account_id)
        if wrapper is None:
            wrapper = {"d": {}, "o": -1}
            self.accounts.data[account_id] = wrapper
        batch.accounts[account_id] = partition
        return wrapper  # type: ignore[no-any-return]

    def _alerts_for(self, batch: _Batch, partition: int, key: str) -> dict[str, Any]:
        state = self.alert_states.get(key)
        if state is None:
            state = self.alert_states.data[key] = new_alert_state()
        batch.alert_states[key] = partition
        return state  # type: ignore[no-any-return]

    def _on_grant(self, batch: _Batch, partition: int, value: bytes | None) -> None:
        grant = self._decode(self.grant_decoder, value)
        if grant is None:
            return
        # Idempotent (it sets the grant's fields), so a replayed grant needs no guard.
        self.engine.observe_grant(self._account(batch, partition, grant["account_id"])["d"], grant)

    def _on_review(self, batch: _Batch, partition: int, value: bytes | None) -> None:
        decision = self._decode(self.review_decoder, value)
        if decision is None:
            return
        etype, eid = decision["entity_type"], decision["entity_id"]
        try:
            # Idempotent on decision_id, so a replayed review changes nothing.
            changed = apply_review(self._alerts_for(batch, partition, alert_state_key(etype, eid)), decision)
        except ValueError as exc:
            log.warning("skipping review %s: %s", decision.get("decision_id"), exc)
            return
        if changed and decision["verdict"] == "CONFIRMED":
            # Keep a confirmed gamer's traffic out of every baseline from now on.
            if etype == "account":
                self.engine.mark_confirmed(self._account(batch, partition, eid)["d"])
            else:
                fp = self.fingerprints.get(alert_state_key(etype, eid))
                if fp is not None:
                    self.engine.mark_confirmed(fp["d"])
                    batch.fps[alert_state_key(etype, eid)] = partition

    def _on_usage(self, batch: _Batch, partition: int, offset: int, value: bytes | None) -> None:
        rec = self._decode(self.usage_decoder, value)
        if rec is None:
            return
        account_id = rec["account_id"]
        wrapper = self._account(batch, partition, account_id)
        if offset <= wrapper["o"]:
            return  # a replay of an event this state already holds (its outputs exist)
        wrapper["o"] = offset
        obs = observation(rec)
        self.events += 1
        self._fold(batch, partition, self.engine.observe_account(wrapper["d"], obs))
        self.recent_accounts[account_id] = partition
        self.recent_accounts.move_to_end(account_id)
        if len(self.recent_accounts) > _RECENT_MAX:
            self.recent_accounts.popitem(last=False)
        obs_json: str | None = None
        for kind, field in self.fp_kinds.items():
            fp = obs.get(field)
            if fp:
                if obs_json is None:
                    obs_json = json.dumps(obs, separators=(",", ":"))
                # The same message json.dumps({"k", "sp", "so", "obs"}) gives, with obs encoded once
                # for all its fingerprints (kind names are plain identifiers).
                payload = f'{{"k":"{kind}","sp":{partition},"so":{offset},"obs":{obs_json}}}'.encode()
                batch.fingerprints.append((fp, payload))

    def _on_fingerprint(self, batch: _Batch, partition: int, key: bytes | None, value: bytes | None) -> None:
        if value is None or key is None:
            return
        msg = json.loads(value)
        kind, obs = msg["k"], msg["obs"]
        fkey = alert_state_key(kind, key.decode())
        wrapper = self.fingerprints.get(fkey)
        if wrapper is None:
            wrapper = self.fingerprints.data[fkey] = {"d": {}, "o": {}}
        src = str(msg["sp"])
        # Observations from one source partition arrive in its order, so a replay (re-published by
        # a detector that crashed before committing) is exactly what is at or below the mark.
        if msg["so"] <= wrapper["o"].get(src, -1):
            return
        wrapper["o"][src] = msg["so"]
        batch.fps[fkey] = partition
        self._fold(batch, partition, self.engine.observe_fingerprint(kind, wrapper["d"], obs))
        self.recent_fps[fkey] = partition
        self.recent_fps.move_to_end(fkey)
        if len(self.recent_fps) > _RECENT_MAX:
            self.recent_fps.popitem(last=False)

    def _fold(self, batch: _Batch, partition: int, firings: list[Firing]) -> None:
        """Firings -> alerts, through the alert state of the firing's entity (in this partition)."""
        for f in firings:
            self.firings += 1
            if self.record_firings is not None:
                self.record_firings.append(f)
            state = self._alerts_for(batch, partition, alert_state_key(f.entity_type, f.entity_id))
            alert = process_firing(state, f)
            if alert is not None:
                batch.alerts.append((f.entity_id, wire_alert(alert)))

    # -- timer flush ------------------------------------------------------------------------------

    async def flush(self, limit: int | None = None) -> int:
        """Evaluate entities touched since the last flush at their last event time, publish what
        fires, write their state. Caller holds ``self.lock``. Returns entities evaluated."""
        batch = _Batch()
        n = 0
        for recent, table, evaluate, target in (
            (self.recent_accounts, self.accounts, self.engine.evaluate_account, batch.accounts),
            (self.recent_fps, self.fingerprints, self.engine.evaluate_fingerprint, batch.fps),
        ):
            while recent and (limit is None or n < limit):
                key, partition = recent.popitem(last=False)
                wrapper = table.get(key)
                common = (wrapper or {}).get("d", {}).get("_")
                if not common or not common.get("ne") or common.get("last") is None:
                    continue
                n += 1
                target[key] = partition
                self._fold(batch, partition, evaluate(wrapper["d"], int(common["last"])))  # type: ignore[index]
        if n:
            await self._publish_and_write(batch)
        return n

    # -- output -----------------------------------------------------------------------------------

    async def _publish_and_write(self, batch: _Batch) -> None:
        producer = self.producer
        assert producer is not None
        pending: list[Awaitable[Any]] = []
        for entity_id, alert in batch.alerts:
            pending.append(await producer.send(self.alerts_topic, encode_single_object(alert, "GamingAlert"),
                                               key=entity_id.encode()))
        if batch.fingerprints:
            if self.fp_partitions is None:
                self.fp_partitions = KeyPartitions(len(await producer.partitions_for(self.fp_topic)))
            # The default partitioner's choice for the fingerprint: where a review keyed by it goes.
            by_partition: dict[int, list[Outgoing]] = {}
            for fp, payload in batch.fingerprints:
                key = fp.encode()
                by_partition.setdefault(self.fp_partitions(key), []).append((key, payload, []))
            pending.extend(await send_partitioned(producer, self.fp_topic, by_partition))
        if pending:
            await asyncio.gather(*pending)
        self.alerts_emitted += len(batch.alerts)
        await self.save(
            (table, partition, key, table.data[key])
            for table, touched in ((self.accounts, batch.accounts), (self.fingerprints, batch.fps),
                                   (self.alert_states, batch.alert_states))
            for key, partition in touched.items())


def register_detector(app: faust.App, settings: Settings, bootstrap: str, names: Mapping[str, str]) -> Detector:
    detector = Detector(settings, bootstrap, names)
    app.service(detector)  # type: ignore[arg-type]  # Faust accepts instances too, its stub says classes
    app.creditflow_detector = detector  # type: ignore[attr-defined]
    return detector
