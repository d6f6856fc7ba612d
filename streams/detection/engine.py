"""Credit-gaming detection inside the processor: rules over each metered event, alerts on
``gaming-alerts``.

Detection is not a consumer of its own. The processor (``streams/processor.py``, read that first)
hands every batch's decoded grants, reviews, freshly metered events and fingerprint observations to
``Detection``, which folds them into its state and says what to publish and write; the processor
publishes, writes this state before its own, and only then commits. So an event is decoded once,
and a metered event the processor skips as a replay (its usage state is written) was necessarily
already folded here (detection state is written first).

Inputs of the processor's consumer group that are detection's alone, both with the Range assignor
(partition i of every topic goes to the same worker):
- ``{prefix}detector-fingerprints``, keyed by the fingerprint hash: the repartition. Every metered
  event that carries a device/payment/prompt fingerprint (and a rule watches that kind) is observed
  in the fingerprint's partition (murmur2 of the hash, as Kafka's default partitioner does). When
  this worker holds that partition the observation is folded at once; otherwise it is published
  here as JSON ``{"k": kind, "sp": source partition, "so": source offset, "obs": ...}`` for the
  worker that holds it;
- ``gaming-reviews``, keyed by the alert's *entity id* (``creditflow alerts review`` does so): the
  account id for account alerts, the fingerprint hash for fingerprint alerts. With the same partition
  count and the default (murmur2) partitioner a review lands on the partition number that holds the
  entity's alert state, in this same worker. A review keyed otherwise is still applied, to state
  kept under the review's partition, but will not meet the entity's open alerts.

State (JSON, see ``streams/runtime/changelog.py``; detector states are typed records written and
read by ``streams/detection/state.py``):
- accounts: account id -> ``{"d": detector state, "o": last interaction-events offset applied}``;
- fingerprints: ``kind|fp`` -> ``{"d": detector state, "o": {source partition: last offset received},
  "held": observations received but not folded yet}`` (``"p"``/``"pk"``, a first sighting and its
  place in the release order, until ``"d"``), and
  ``~clock|<partition>`` -> that fingerprint partition's source clocks;
- alerts: ``entity_type|entity_id`` -> ``streams.detection.alerts`` state (open alerts, suppression, verdicts).

Replays: the offsets in the account and fingerprint state make a replayed batch skip what was
applied (an observation folded directly and later re-published, or re-published by a replay, is
not counted twice: one source partition's observations reach a fingerprint in offset order either
way); alert ids are deterministic in their dedup key, so an alert re-emitted by a replay replaces
itself at the sink.

A fingerprint's observations come from every input partition, each read at its own pace: they are
held until every source's clock has passed them and folded in event-time order
(``streams/detection/source_clock.py``), so the interleaving of partitions does not change what
the fingerprint rules see. Each source's owner tells every fingerprint partition its clock after a
batch, and that it is idle after a timer tick without events.

Evaluation happens in event time (see ``streams/detection/rulebook.py``): an entity's events not
evaluated yet (its "tail") are evaluated at its last event time either by its next event, or by the
processor's timer (``CREDITFLOW_DETECTOR_FLUSH_SECONDS``, 30 s, at most ``FLUSH_MAX`` entities per
tick) once the entity's partition has moved ``eval_every_ms`` of event time past it. Both evaluate
the same state at the same time, so a backlog and paced traffic give the same alerts. When nothing
at all arrived since the previous tick (the input is caught up and quiet), every tail is evaluated:
a quiet account's findings would otherwise wait for traffic.
"""

from __future__ import annotations

import heapq
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Collection, Iterable, Mapping, Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from streams.credits.policy import load_policy
from streams.detection.alerts import apply_review, new_alert_state, process_firing, to_avro
from streams.detection.rulebook import FINGERPRINT_FIELDS, DetectorEngine
from streams.detection.rules.base import Firing, is_new_account
from streams.detection.source_clock import SourceClocks, apply_clock_message, clock_message, insert_held
from streams.detection.state import DETECTOR_TABLE_CODEC
from streams.runtime.batch_send import KeyPartitions, Outgoing, send_partitioned
from streams.runtime.changelog import ChangelogTable
from streams.runtime.topics import DETECTOR_FINGERPRINTS, GAMING_ALERTS, GAMING_REVIEWS
from streams.settings import Settings
from streams.wire.codec import DecodeError, Decoder, SchemaRegistryClient, encode_single_object

log = logging.getLogger("creditflow.detection")
FLUSH_MAX = 5_000  # entities evaluated per timer tick: keeps a tick's pause bounded
_RECENT_MAX = 50_000  # touched entities remembered for the timer; the oldest are forgotten
# The observation the engine expects, taken from a UsageEnriched record (debits are rebuilt).
_OBS_FIELDS = ("event_id", "account_id", "occurred_at", "plan", "category", "model", "outcome", "error_code",
               "input_tokens", "output_tokens", "context_window_tokens", "context_uniqueness",
               "reasoning_steps", "thinking_tokens", "tool_calls", "list_micro", "charged_micro",
               "grant_funded_micro", "ip_hash", "device_hash", "payment_hash", "prompt_fingerprint",
               "new_account")


def observation(rec: Mapping[str, Any]) -> dict[str, Any]:
    """UsageEnriched record -> the observation ``DetectorEngine.observe_account`` takes: the record's
    fields (rules read only theirs; a whole-dict copy is cheaper than picking 22) with the debits as
    tuples. ``wire_observation`` is the subset sent to other workers."""
    obs = dict(rec)
    obs["debits"] = [(d["grant_id"], d["amount_micro"], d["balance_after_micro"]) for d in rec["debits"]]
    return obs


_WIRE_FIELDS = (*_OBS_FIELDS, "debits")


def wire_observation(obs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: obs.get(k) for k in _WIRE_FIELDS}


# What the fingerprint rules read of an observation (``observe_common`` without grants, CF-004
# farming, CF-005 trial cycling, CF-008 replayed prompts). A fingerprint seen once keeps just these
# (see ``Detection._observe_fingerprint``); ``test_detection_fold`` checks the rules agree.
_FP_OBS_FIELDS = ("event_id", "account_id", "occurred_at", "plan", "category", "list_micro", "charged_micro",
                  "grant_funded_micro", "debits", "new_account")


def pending_observation(obs: Mapping[str, Any], kind: str) -> list[Any]:
    return [*(obs.get(k) for k in _FP_OBS_FIELDS), obs.get(FINGERPRINT_FIELDS[kind])]


def observation_from_pending(pending: Sequence[Any], kind: str) -> dict[str, Any]:
    obs = dict(zip(_FP_OBS_FIELDS, pending, strict=False))
    obs[FINGERPRINT_FIELDS[kind]] = pending[len(_FP_OBS_FIELDS)]
    return obs


# A fingerprint's observations held for release (``Detection._receive``), under a key no rule uses,
# so recovery finds the few fingerprints holding some by their changelog bytes alone.
HELD = "held"
HELD_MARKER = b'"held":['
# A kept first sighting's place in the release order: [order time, source, offset].
FIRST_KEY = "pk"
# Key of the source clocks' messages on ``detector-fingerprints`` (fingerprint keys are hex hashes).
CLOCK_MESSAGE_KEY = b"~clock"


def clock_state_key(partition: int) -> str:
    """The fingerprint partition's source clocks, in the fingerprints table (kinds never start with ~)."""
    return f"~clock|{partition}"


def wire_alert(alert: Mapping[str, Any]) -> dict[str, Any]:
    """The GamingAlert as the schema promises it (see ``streams.detection.alerts.to_avro``)."""
    return to_avro(alert)


def alert_state_key(entity_type: str, entity_id: str) -> str:
    return f"{entity_type}|{entity_id}"


class DetectionBatch:
    """What one batch (or one timer flush) changed and must publish."""

    def __init__(self) -> None:
        self.alerts: list[tuple[str, dict[str, Any]]] = []  # (entity id key, GamingAlert)
        # fingerprint-topic partition -> (fingerprint, JSON observation) for other workers
        self.fingerprints: dict[int, list[tuple[str, bytes]]] = {}
        # Fingerprint partitions whose source clocks changed: their state record is written.
        self.clocks: set[int] = set()
        self.folded_here = 0  # fingerprint observations folded without the round trip
        self.accounts: dict[str, int] = {}  # key -> partition of touched state
        self.fps: dict[str, int] = {}
        # Fingerprints that took a held observation: ``changes`` compacts what they still hold.
        self.holding: set[str] = set()
        self.alert_states: dict[str, int] = {}


class Detection:
    def __init__(self, settings: Settings, names: Mapping[str, str]) -> None:
        app_id = settings.app_id
        self.accounts = ChangelogTable("detector-accounts", f"{app_id}-detector-accounts-changelog",
                                       settings.partitions, state_dir=settings.state_dir, codec=DETECTOR_TABLE_CODEC)
        self.fingerprints = ChangelogTable("detector-fingerprints", f"{app_id}-detector-fingerprints-changelog",
                                           settings.partitions, state_dir=settings.state_dir, marker=HELD_MARKER,
                                           codec=DETECTOR_TABLE_CODEC)
        self.alert_states = ChangelogTable("detector-alerts", f"{app_id}-detector-alerts-changelog",
                                           settings.partitions, state_dir=settings.state_dir)
        self.engine = DetectorEngine(policy=load_policy(settings.policy_path))
        # Fingerprint kinds some rule watches: only those are repartitioned.
        self.fp_kinds = {k: f for k, f in FINGERPRINT_FIELDS.items()
                         if any(k in d.entity_types for d in self.engine.detectors)}
        registry = SchemaRegistryClient(settings.schema_registry_url) if settings.schema_registry_url else None
        self.review_decoder = Decoder("ReviewDecision", registry)
        self.reviews_topic = names[GAMING_REVIEWS]
        self.alerts_topic = names[GAMING_ALERTS]
        self.fp_topic = settings.topic(DETECTOR_FINGERPRINTS)
        # Where the default partitioner puts a fingerprint; set by the processor from the topic's metadata.
        self.fp_partitions: KeyPartitions | None = None
        # Entities with events not evaluated yet (see ``_remember``): key -> (partition, last event
        # time), oldest first.
        self.recent_accounts: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self.recent_fps: OrderedDict[str, tuple[int, int]] = OrderedDict()
        # Event-time watermarks: the latest event time folded per interaction-events partition and
        # per fingerprint partition; and whether anything was folded since the timer's last tick.
        self.watermarks: dict[int, int] = {}
        self.fp_watermarks: dict[int, int] = {}
        self.active_since_tick = False
        # Holding fingerprint observations until every source passed them (``source_clock``): the
        # number of sources (interaction-events partitions; the processor sets it from the topic),
        # each fingerprint partition's clocks, and a heap per partition of the fingerprints holding
        # observations, (earliest order time held, fingerprint key), rebuilt from the state on recovery.
        self.source_partitions = 1
        self.source_clocks: dict[int, SourceClocks] = {}
        self.held: dict[int, list[tuple[int, str]]] = {}
        # Sources this worker metered events of since the timer's last tick, and the clock last told
        # to each other worker's fingerprint partition, (source, fp partition) -> time or None (idle).
        self.sources_active: set[int] = set()
        self.clock_sent: dict[tuple[int, int], int | None] = {}
        self.events = 0
        self.alerts_emitted = 0
        self.firings = 0
        self.undecodable = 0
        # The evaluation harness sets this to a list to see raw firings; None in production.
        self.record_firings: list[Firing] | None = None

    @property
    def tables(self) -> tuple[ChangelogTable, ...]:
        return self.accounts, self.fingerprints, self.alert_states

    def on_release(self, partitions: set[int]) -> None:
        for recent in (self.recent_accounts, self.recent_fps):
            for key in [k for k, p in recent.items() if p in partitions]:
                del recent[key]
        for p in partitions:
            self.source_clocks.pop(p, None)
            self.held.pop(p, None)
            self.sources_active.discard(p)
        # Whoever takes a source next tells every fingerprint partition its clock again.
        self.clock_sent = {k: v for k, v in self.clock_sent.items() if k[0] not in partitions}

    def on_recovered(self, partitions: Iterable[int]) -> None:
        """After the tables recovered ``partitions``: index the observations their fingerprints hold."""
        for p in partitions:
            self.source_clocks.pop(p, None)
            heap = self.held[p] = []
            for fkey in self.fingerprints.marked.pop(p, ()):
                held = (self.fingerprints.get(fkey) or {}).get(HELD)
                if held:
                    heap.append((int(held[0][0]), fkey))
            heapq.heapify(heap)

    # -- folding one batch --------------------------------------------------------------------------

    def _account(self, batch: DetectionBatch, partition: int, account_id: str) -> dict[str, Any]:
        wrapper = self.accounts.get(account_id)
        if wrapper is None:
            wrapper = {"d": {}, "o": -1}
            self.accounts.set(account_id, wrapper)
        batch.accounts[account_id] = partition
        return wrapper  # type: ignore[no-any-return]

    def _alerts_for(self, batch: DetectionBatch, partition: int, key: str) -> dict[str, Any]:
        state = self.alert_states.get(key)
        if state is None:
            state = self.alert_states.set(key, new_alert_state())
        batch.alert_states[key] = partition
        return state  # type: ignore[no-any-return]

    def on_grants(self, batch: DetectionBatch, grants: Iterable[tuple[int, Mapping[str, Any]]]) -> None:
        """Decoded, valid CreditGrant events with their partition. Idempotent (a grant's fields are
        set), so a replayed grant needs no guard."""
        for partition, grant in grants:
            self.engine.observe_grant(self._account(batch, partition, grant["account_id"])["d"], grant)

    def on_review(self, batch: DetectionBatch, partition: int, value: bytes | None) -> None:
        if value is None:
            return
        try:
            decision = self.review_decoder.decode(value)
        except DecodeError as exc:
            # Reviews come from `creditflow alerts review`; an unreadable one is logged and skipped
            # rather than stopping the partition.
            self.undecodable += 1
            log.warning("skipping an undecodable review: %s", exc)
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
                # A fingerprint whose observations are all still held has no detector state to mark.
                if fp is not None and ("d" in fp or "p" in fp):
                    self.engine.mark_confirmed(self._expanded(etype, fp))
                    batch.fps[alert_state_key(etype, eid)] = partition

    def on_metered(self, batch: DetectionBatch, metered: Sequence[Mapping[str, Any]],
                   fp_partitions_here: Collection[int]) -> None:
        """UsageEnriched records just metered (in input order per partition). Fingerprint
        observations whose partition is in ``fp_partitions_here`` are folded now, the rest queued."""
        assert self.fp_partitions is not None, "the processor sets fp_partitions before the first batch"
        where = self.fp_partitions
        kinds = tuple(self.fp_kinds.items())
        # Each fingerprint of the batch encoded once, for the vectorised partition pass and the lookups.
        fp_keys = {fp: fp.encode() for rec in metered for _, field in kinds if (fp := rec.get(field))}
        where.prime(fp_keys.values())
        for rec in metered:
            account_id = rec["account_id"]
            partition, offset = rec["source_partition"], rec["source_offset"]
            wrapper = self._account(batch, partition, account_id)
            if offset <= wrapper["o"]:
                continue  # a replay of an event this state already holds (its outputs exist)
            wrapper["o"] = offset
            obs = observation(rec)
            self.events += 1
            self.active_since_tick = True
            t = obs["occurred_at"]
            if t > self.watermarks.get(partition, t - 1):
                self.watermarks[partition] = t
            self._fold(batch, partition, self.engine.observe_account(wrapper["d"], obs))
            # Fingerprint rules tell a fresh sign-up from an old account by this (grant dates live here).
            obs["new_account"] = is_new_account(wrapper["d"]["_"])
            self._remember(self.recent_accounts, account_id, partition, wrapper["d"])
            obs_json: bytes | None = None
            for kind, field in kinds:
                fp = obs.get(field)
                if not fp:
                    continue
                target = where(fp_keys[fp])
                if target in fp_partitions_here:
                    self._receive(batch, target, kind, fp, partition, offset, obs)
                    batch.folded_here += 1
                    continue
                if obs_json is None:
                    obs_json = orjson.dumps(wire_observation(obs))
                # The message {"k", "sp", "so", "obs"} as JSON, with obs encoded once for all its
                # fingerprints (kind names are plain identifiers).
                payload = f'{{"k":"{kind}","sp":{partition},"so":{offset},"obs":'.encode() + obs_json + b"}"
                batch.fingerprints.setdefault(target, []).append((fp, payload))
        sources = {rec["source_partition"] for rec in metered}
        self.sources_active |= sources
        self._tell_clocks(batch, sources, fp_partitions_here)
        self.release(batch, fp_partitions_here)

    def on_fingerprint(self, batch: DetectionBatch, partition: int, key: bytes | None, value: bytes | None) -> None:
        """A fingerprint observation or a source's clock another worker published for this one
        (``release`` folds what they let go)."""
        if value is None or key is None:
            return
        msg = orjson.loads(value)
        if key == CLOCK_MESSAGE_KEY:
            if apply_clock_message(self._clocks(partition), msg):
                batch.clocks.add(partition)
            return
        self._receive(batch, partition, msg["k"], key.decode(), msg["sp"], msg["so"], msg["obs"])

    def _clocks(self, partition: int) -> SourceClocks:
        clocks = self.source_clocks.get(partition)
        if clocks is None:
            clocks = self.source_clocks[partition] = SourceClocks.from_json(
                self.source_partitions, self.fingerprints.get(clock_state_key(partition)))
        return clocks

    def _receive(self, batch: DetectionBatch, partition: int, kind: str, fp: str,
                 source_partition: int, source_offset: int, obs: Mapping[str, Any]) -> None:
        """An observation reached its fingerprint's partition: held (in the fingerprint's state)
        until its sources' clocks let it go, see ``streams/detection/source_clock.py``."""
        fkey = alert_state_key(kind, fp)
        wrapper = self.fingerprints.get(fkey)
        src = str(source_partition)
        if wrapper is None:
            # Most fingerprints (prompts above all) are seen once, and no rule fires on one sighting:
            # it is kept, as the few fields the rules read and its place in the release order, and
            # the state is built at the second sighting. Nothing is folded, so it needs no holding:
            # an earlier observation released later takes its place (``_fold_fingerprint``).
            order_time = self._clocks(partition).order_time(source_partition, int(obs["occurred_at"]))
            self.fingerprints.set(fkey, {"o": {src: source_offset}, "p": pending_observation(obs, kind),
                                         FIRST_KEY: [order_time, source_partition, source_offset]})
            batch.fps[fkey] = partition
            batch.clocks.add(partition)
            return
        # Observations from one source partition arrive in its order, so a replay is exactly what
        # is at or below the mark.
        if source_offset <= wrapper["o"].get(src, -1):
            return
        wrapper["o"][src] = source_offset
        batch.fps[fkey] = partition
        batch.clocks.add(partition)
        order_time = self._clocks(partition).order_time(source_partition, int(obs["occurred_at"]))
        # Held as it came; ``changes`` keeps only the fields the rules read of those still held when
        # the state is written (most are released in the batch that brought them).
        held = wrapper.setdefault(HELD, [])
        batch.holding.add(fkey)
        if insert_held(held, [order_time, source_partition, source_offset, obs]) == 0:
            # The heap has an entry per fingerprint for its earliest held observation.
            heapq.heappush(self.held.setdefault(partition, []), (order_time, fkey))

    def _tell_clocks(self, batch: DetectionBatch, sources: Iterable[int], fp_partitions_here: Collection[int],
                     *, idle: bool = False) -> None:
        """Each of ``sources`` (metered here) tells every fingerprint partition how far it has come,
        or that it is idle: directly to those folded here, through the topic (after the
        observations it sent, so in their order) to the others."""
        assert self.fp_partitions is not None
        for source in sources:
            clock = None if idle else self.watermarks.get(source)
            if clock is None and not idle:
                continue
            for target in range(self.fp_partitions.partitions):
                if target in fp_partitions_here:
                    clocks = self._clocks(target)
                    if clocks.set_idle(source) if clock is None else clocks.advance(source, clock):
                        batch.clocks.add(target)
                elif self.clock_sent.get((source, target), -1) != clock:
                    self.clock_sent[(source, target)] = clock
                    batch.fingerprints.setdefault(target, []).append(
                        (CLOCK_MESSAGE_KEY.decode(), orjson.dumps(clock_message(source, clock))))

    def release(self, batch: DetectionBatch, fp_partitions_here: Collection[int]) -> None:
        """Fold, in release order, every held observation the frontier of its partition lets go."""
        for partition in list(self.held):
            if partition not in fp_partitions_here:
                continue
            heap = self.held[partition]
            frontier = self._clocks(partition).frontier()
            if frontier is None:
                continue
            while heap and heap[0][0] <= frontier:
                t, fkey = heapq.heappop(heap)
                wrapper = self.fingerprints.get(fkey)
                held = (wrapper or {}).get(HELD)
                if not held or held[0][0] != t:
                    continue  # stale: the fingerprint's earliest held observation changed since
                first = wrapper.get(FIRST_KEY)  # type: ignore[union-attr]
                if first is not None and "d" not in wrapper and held[0][:3] < first:  # type: ignore[operator]
                    # The kept first sighting is not the first in event-time order: it is held
                    # like the others, and the earliest released becomes the first sighting.
                    insert_held(held, [*first, wrapper.pop("p")])  # type: ignore[union-attr]
                    del wrapper[FIRST_KEY]  # type: ignore[attr-defined]
                n = 1
                while n < len(held) and held[n][0] <= frontier:
                    n += 1
                release, rest = held[:n], held[n:]
                if rest:
                    wrapper[HELD] = rest  # type: ignore[index]
                    heapq.heappush(heap, (rest[0][0], fkey))
                else:
                    del wrapper[HELD]  # type: ignore[attr-defined]
                batch.fps[fkey] = partition
                kind = fkey.split("|", 1)[0]
                for entry in release:
                    obs = entry[3]
                    self._fold_fingerprint(batch, partition, kind, fkey, wrapper, entry[:3],  # type: ignore[arg-type]
                                           observation_from_pending(obs, kind) if isinstance(obs, list) else obs)

    def _fold_fingerprint(self, batch: DetectionBatch, partition: int, kind: str, fkey: str,
                          wrapper: dict[str, Any], key: list[int], obs: Mapping[str, Any]) -> None:
        if "d" not in wrapper and "p" not in wrapper:
            wrapper["p"], wrapper[FIRST_KEY] = pending_observation(obs, kind), key
            return
        t = int(obs["occurred_at"])
        if t > self.fp_watermarks.get(partition, t - 1):
            self.fp_watermarks[partition] = t
        self._fold(batch, partition, self.engine.observe_fingerprint(kind, self._expanded(kind, wrapper), obs))
        self._remember(self.recent_fps, fkey, partition, wrapper["d"])

    def _expanded(self, kind: str, wrapper: dict[str, Any]) -> dict[str, Any]:
        """The fingerprint's detector state, built from its first sighting if that is all there is."""
        pending = wrapper.pop("p", None)
        wrapper.pop(FIRST_KEY, None)
        if pending is not None:
            wrapper["d"] = {}
            # A first observation never fires (it only seeds the state and its evaluation clock).
            self.engine.observe_fingerprint(kind, wrapper["d"], observation_from_pending(pending, kind))
        return wrapper["d"]  # type: ignore[no-any-return]

    @staticmethod
    def _remember(recent: OrderedDict[str, tuple[int, int]], key: str, partition: int,
                  state: Mapping[str, Any]) -> None:
        """After an entity's event: keep it for the timer while it has events its rules have not seen."""
        # An entity evaluated with its event has nothing for the timer. Remembering it anyway made
        # every tick decode up to 2 x _RECENT_MAX states only to skip them, all held in the tables'
        # hot sets until the next write: +150-180 MiB for ~1 s, with 300k one-event accounts.
        common = state.get("_")  # absent when no rule watches the entity's kind
        if not common or not common.events_since_evaluation:
            recent.pop(key, None)
            return
        recent[key] = (partition, int(common.last_event_at))
        recent.move_to_end(key)
        if len(recent) > _RECENT_MAX:
            recent.popitem(last=False)

    def _fold(self, batch: DetectionBatch, partition: int, firings: list[Firing]) -> None:
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

    def tick(self, batch: DetectionBatch, sources: Iterable[int], fp_partitions_here: Collection[int],
             *, all_idle: bool = False) -> None:
        """The timer's turn for the source clocks: each of ``sources`` (metered here) with no event
        since the previous tick is declared idle, every one of them when ``all_idle`` (the input is
        complete); then what that lets go is folded."""
        idle = set(sources) if all_idle else set(sources) - self.sources_active
        self.sources_active.clear()
        self._tell_clocks(batch, sorted(idle), fp_partitions_here, idle=True)
        self.release(batch, fp_partitions_here)

    def evaluate_quiet(self, batch: DetectionBatch, limit: int | None = None, *, force: bool = False) -> int:
        """Evaluate the tails that are due (see the module docstring), at their last event time:
        those whose partition's event time moved ``eval_every_ms`` past them, or all of them when
        ``force`` is given or nothing arrived since the previous call. Returns entities evaluated."""
        force = force or not self.active_since_tick
        self.active_since_tick = False
        wait = self.engine.eval_every_ms
        n = 0
        for recent, table, evaluate, target, marks in (
            (self.recent_accounts, self.accounts, self.engine.evaluate_account, batch.accounts, self.watermarks),
            (self.recent_fps, self.fingerprints, self.engine.evaluate_fingerprint, batch.fps, self.fp_watermarks),
        ):
            due = [key for key, (partition, last) in recent.items()
                   if force or marks.get(partition, last) - last >= wait]
            for key in due:
                if limit is not None and n >= limit:
                    break
                partition, _last = recent.pop(key)
                wrapper = table.get(key)
                common = (wrapper or {}).get("d", {}).get("_")
                if not common or not common.events_since_evaluation or common.last_event_at is None:
                    continue
                n += 1
                target[key] = partition
                self._fold(batch, partition, evaluate(wrapper["d"], common.last_event_at))  # type: ignore[index]
        return n

    # -- output -----------------------------------------------------------------------------------

    async def publish(self, producer: AIOKafkaProducer, batch: DetectionBatch) -> list[Awaitable[Any]]:
        """Queue the batch's alerts and fingerprint observations; returns the delivery futures."""
        pending: list[Awaitable[Any]] = []
        for entity_id, alert in batch.alerts:
            pending.append(await producer.send(self.alerts_topic, encode_single_object(alert, "GamingAlert"),
                                               key=entity_id.encode()))
        self.alerts_emitted += len(batch.alerts)
        if batch.fingerprints:
            by_partition: dict[int, list[Outgoing]] = {
                p: [(fp.encode(), payload, []) for fp, payload in items] for p, items in batch.fingerprints.items()}
            pending.extend(await send_partitioned(producer, self.fp_topic, by_partition))
        return pending

    def changes(self, batch: DetectionBatch) -> list[tuple[ChangelogTable, int, str, Any]]:
        """(table, partition, key, value) of every state the batch touched."""
        fingerprints = self.fingerprints
        for fkey in batch.holding:
            wrapper = fingerprints.get(fkey)
            if wrapper and HELD in wrapper:
                kind = fkey.split("|", 1)[0]
                for entry in wrapper[HELD]:
                    if not isinstance(entry[3], list):
                        entry[3] = pending_observation(entry[3], kind)
        for partition in batch.clocks:
            key = clock_state_key(partition)
            batch.fps[key] = partition
            self.fingerprints.set(key, self._clocks(partition).to_json())
        return [(table, partition, key, table.get(key))
                for table, touched in ((self.accounts, batch.accounts), (self.fingerprints, batch.fps),
                                       (self.alert_states, batch.alert_states))
                for key, partition in touched.items()]
