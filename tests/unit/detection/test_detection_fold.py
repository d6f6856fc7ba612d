"""Detection inside the processor: a fingerprint observation folded where it is (this worker holds
the fingerprint's partition) and one sent through ``detector-fingerprints`` and read back must leave
the same state and the same alerts, and replays of either must change nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from streams.credits.meter import Meter, RawRecord
from streams.credits.policy import load_policy
from streams.detection.engine import CLOCK_MESSAGE_KEY, Detection, DetectionBatch
from streams.runtime.batch_send import KeyPartitions
from streams.runtime.changelog import ChangelogTable
from streams.runtime.topics import topic_names
from streams.settings import Settings
from streams.synthetic.scenarios import build
from streams.wire.codec import Decoder, encode_single_object

PARTITIONS = 6


@pytest.fixture(scope="module")
def enriched() -> list[dict[str, Any]]:
    scenarios = build("small", seed=11)
    meter = Meter(load_policy(), Decoder("InteractionEvent"), Decoder("CreditGrant"))
    granted = meter.grants([RawRecord("g", 0, i, None, encode_single_object(g, "CreditGrant"))
                            for i, g in enumerate(scenarios.grants)], lambda _a: None, scenarios.end_ms)
    grants = {a: state for a, (_p, state) in granted.grant_updates.items()}
    # One input partition: the account-level offset marks compare offsets within a partition.
    raws = [RawRecord("in", 0, i, None, encode_single_object(ev, "InteractionEvent"))
            for i, ev in enumerate(scenarios.events)]
    return meter.meter(raws, lambda _a: None, grants.get, scenarios.end_ms).enriched


def _detection(tmp_path: Path) -> Detection:
    settings = Settings(data_dir=tmp_path)
    d = Detection(settings, topic_names(settings))
    d.fp_partitions = KeyPartitions(PARTITIONS)
    return d


def _json(value: Any) -> str:
    # Detector states hold typed records: compared as the builtins they are written as.
    return json.dumps(msgspec.to_builtins(value), sort_keys=True)


def _contents(table: ChangelogTable) -> dict[str, Any]:
    return {key: table.get(key) for key in table}


def _alerts(batches: list[DetectionBatch]) -> set[tuple[str, str, str]]:
    return {(a["alert_id"], a["entity_id"], a["rule_id"]) for b in batches for _e, a in b.alerts}


def test_folding_here_equals_the_round_trip_through_kafka(tmp_path: Path, enriched: list[dict[str, Any]]) -> None:
    here = _detection(tmp_path)
    direct = DetectionBatch()
    here.on_metered(direct, enriched, set(range(PARTITIONS)))
    assert direct.folded_here > 0 and not direct.fingerprints

    remote = _detection(tmp_path)
    sent = DetectionBatch()
    remote.on_metered(sent, enriched, set())
    assert sent.folded_here == 0
    clock_messages = [(p, json.loads(payload)) for p, items in sent.fingerprints.items()
                      for fp, payload in items if fp.encode() == CLOCK_MESSAGE_KEY]
    # Each fingerprint partition hears, after the observations, how far the one source has come.
    last = max(rec["occurred_at"] for rec in enriched)
    assert sorted(clock_messages, key=lambda m: m[0]) == [(p, {"source": 0, "time": last}) for p in range(PARTITIONS)]
    messages = sum(len(v) for v in sent.fingerprints.values())
    assert messages == direct.folded_here + len(clock_messages)
    received = DetectionBatch()
    for partition, items in sent.fingerprints.items():
        for fp, payload in items:
            if fp.encode() != CLOCK_MESSAGE_KEY:
                assert json.loads(payload)["sp"] == 0
            remote.on_fingerprint(received, partition, fp.encode(), payload)
    remote.release(received, set(range(PARTITIONS)))

    # As their changelogs hold them (a first sighting's debits are tuples here, lists after JSON).
    assert _json(_contents(here.fingerprints)) == _json(_contents(remote.fingerprints))
    assert _json(_contents(here.accounts)) == _json(_contents(remote.accounts))
    assert _alerts([direct]) == _alerts([sent, received])
    assert any(rule for _i, _e, rule in _alerts([direct]))  # the scenario set makes fingerprint rules fire
    assert {fkey.split("|")[0] for fkey in here.fingerprints} >= {"device", "payment", "prompt"}

    # A replay of the same observations, by either route, is recognised by the offset marks.
    before = _json(_contents(here.fingerprints))
    again = DetectionBatch()
    for partition, items in sent.fingerprints.items():
        for fp, payload in items:
            here.on_fingerprint(again, partition, fp.encode(), payload)
    here.on_metered(again, enriched, set(range(PARTITIONS)))
    assert _json(_contents(here.fingerprints)) == before
    assert not again.alerts and again.folded_here == 0 and not again.fps


def test_only_observations_for_partitions_held_here_are_folded(tmp_path: Path,
                                                              enriched: list[dict[str, Any]]) -> None:
    d = _detection(tmp_path)
    batch = DetectionBatch()
    d.on_metered(batch, enriched, {0, 1, 2})
    assert batch.folded_here > 0
    assert set(batch.fingerprints) <= {3, 4, 5} and batch.fingerprints
    assert all(int(p) in {0, 1, 2} for p in batch.fps.values())


def test_a_fingerprint_kept_as_its_first_sighting_grows_the_same_state(tmp_path: Path,
                                                                        enriched: list[dict[str, Any]]) -> None:
    """The rules see exactly what they would have seen had the state been built at the first sighting."""
    from streams.detection.engine import observation

    d = _detection(tmp_path)
    d.record_firings = []
    d.on_metered(DetectionBatch(), enriched, set(range(PARTITIONS)))
    reference: dict[str, dict[str, Any]] = {}
    firings: list[tuple[str, str]] = []
    for rec in enriched:
        obs = observation(rec)
        for kind, field in d.fp_kinds.items():
            if obs.get(field):
                state = reference.setdefault(f"{kind}|{obs[field]}", {})
                first = not state
                found = d.engine.observe_fingerprint(kind, state, obs)
                assert not (first and found), "a first sighting never fires"
                firings += [(f.entity_id, f.rule_id) for f in found]
    seen_once = {k for k, w in _contents(d.fingerprints).items() if "p" in w}
    assert seen_once and len(seen_once) < len(reference)
    for key, wrapper in _contents(d.fingerprints).items():
        if key in seen_once:
            assert wrapper["p"][-1] == key.split("|", 1)[1]
            continue
        assert _json(wrapper["d"]) == _json(reference[key]), key
    assert firings, "fingerprint rules fire on this scenario set"
    assert sorted(firings) == sorted((f.entity_id, f.rule_id) for f in d.record_firings
                                     if f.entity_type != "account")


def test_the_timer_remembers_only_entities_with_events_not_evaluated(tmp_path: Path,
                                                                     enriched: list[dict[str, Any]]) -> None:
    d = _detection(tmp_path)
    batch = DetectionBatch()
    d.on_metered(batch, enriched, set(range(PARTITIONS)))

    def pending(table: ChangelogTable, key: str) -> int:
        return int(table.get(key)["d"]["_"].events_since_evaluation)

    waiting = {k for k in d.accounts if pending(d.accounts, k)}
    assert waiting and len(waiting) < len(list(d.accounts))  # some accounts were evaluated with their events
    assert set(d.recent_accounts) == waiting
    fps_waiting = {k for k in d.fingerprints if "d" in d.fingerprints.get(k) and pending(d.fingerprints, k)}
    assert set(d.recent_fps) == fps_waiting

    hydrated = d.accounts.hydrated + d.fingerprints.hydrated
    quiet = DetectionBatch()
    assert d.evaluate_quiet(quiet, force=True) == len(waiting) + len(fps_waiting)
    assert not d.recent_accounts and not d.recent_fps
    assert set(quiet.accounts) == waiting and set(quiet.fps) == fps_waiting
    assert all(pending(d.accounts, k) == 0 for k in waiting)
    # Every value the tick read is one it evaluated (and will write): none decoded only to be skipped.
    assert d.accounts.hydrated + d.fingerprints.hydrated - hydrated <= len(waiting) + len(fps_waiting)


def test_held_observations_survive_a_restart_and_fold_as_if_never_held(tmp_path: Path,
                                                                        enriched: list[dict[str, Any]]) -> None:
    """With a second source not heard from, every observation is held. The held ones, written to the
    changelog and recovered by another worker, are indexed again from the changelog bytes and,
    once the second source goes idle, fold to the state of a worker that never held them."""

    every = set(range(PARTITIONS))
    reference = _detection(tmp_path)
    ref_batch = DetectionBatch()
    reference.on_metered(ref_batch, enriched, every)

    first = _detection(tmp_path)
    first.source_partitions = 2  # source 1 sends nothing: its clock is unknown
    batch = DetectionBatch()
    first.on_metered(batch, enriched, every)
    assert not any(a["entity_type"] != "account" for _e, a in batch.alerts)  # nothing folded, nothing fired
    held = {k for k, w in _contents(first.fingerprints).items() if "held" in w}
    # A first sighting is kept at once (nothing is folded for it); every later one is held.
    assert held and not any("d" in first.fingerprints.get(k) for k in held)

    second = _detection(tmp_path)
    second.source_partitions = 2
    for table, partition, key, value in first.changes(batch):
        target = {first.accounts: second.accounts, first.fingerprints: second.fingerprints,
                  first.alert_states: second.alert_states}[table]
        target.restore(partition, key.encode(), table.codec.encode(value))  # as the changelog holds it
    assert set().union(*second.fingerprints.marked.values()) == held
    second.on_recovered(every)
    # One heap entry per fingerprint holding observations, at its earliest.
    assert sorted(e for h in second.held.values() for e in h) == sorted(
        (second.fingerprints.get(k)["held"][0][0], k) for k in held)

    after = DetectionBatch()
    second.tick(after, [1], every, all_idle=True)
    contents = _contents(second.fingerprints)
    assert not any("held" in w for w in contents.values())
    fingerprints = {k: w for k, w in contents.items() if not k.startswith("~")}
    expected = {k: w for k, w in _contents(reference.fingerprints).items() if not k.startswith("~")}
    assert _json(fingerprints) == _json(expected)
    fp_alerts = {(a["alert_id"], a["rule_id"]) for _e, a in ref_batch.alerts if a["entity_type"] != "account"}
    assert fp_alerts and fp_alerts == {(a["alert_id"], a["rule_id"]) for _e, a in after.alerts}
