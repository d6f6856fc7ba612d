"""Detector state in the changelog (``streams/detection/state.py``): typed records written with the
short keys, and what the dict-based versions wrote still loads."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from streams.detection.rulebook import DetectorEngine
from streams.detection.rules.base import CommonState
from streams.detection.rules.cf011_spike import SpikeState
from streams.detection.state import DETECTOR_TABLE_CODEC, decode_detector_state, encode_detector_state

START = 1_767_225_600_000

# Written by the dict-based version (main at a499122) for the inputs of ``_account_inputs`` (grant
# event, then four events): ``orjson.dumps({"d": state, "o": 3})``, as its changelog holds it.
LEGACY_ACCOUNT = (
    b'{"d":{"_":{"id":"acct-1","plan":"FREE","first":1767225600000,"last":1767225783000,"n":4,"ne":1,'
    b'"ea":1767225722000,"flag":0,"ids":["e0","e1","e2","e3"],"win":{"b":20454,"cur":{"TOOL_USE":20000,'
    b'"sub":20000,"gf":40000,"STANDARD_CHAT":20000},"prev":{}},"g":{"g1":{"amt":50000,"gat":1767225540000,'
    b'"exp":1767484800000,"sp":40000,"t80":1767225783000,"exh":null,"first":1767225540000,"camp":"welcome",'
    b'"nd":4}},"new":true},"CF-001":{"hr":[490896,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,'
    b'-1,-1,-1,-1,-1],"c":[4,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],"_r":2},"CF-002":{"last":'
    b'1767225783000,"gaps":[61000,61000,61000],"hod":[4,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],'
    b'"hn":4,"_r":2},"CF-003":{"paid":0,"snap":{"g1":0},"day1":4,"day1w":2,"_r":2,"n":4,"w":2},"CF-007":'
    b'{"win":{"b":20454,"cur":{"n":4,"list":60000,"charged":40000,"w":2,"min":2},"prev":{}},"_r":2},'
    b'"CF-008":{"k":{"p1":[4,2]},"n":4,"w":2,"a":{},"_r":2},"CF-009":{"d":20454,"dc":40000,"dn":4,"base":0,'
    b'"basen":0,"act":0,"fin":{},"_r":2},"CF-010":{"win":{"b":2945376,"cur":{"n":4,"bad":1,"ref":1},'
    b'"prev":{}},"codes":{"REFUSED":1}},"CF-011":{"h":490896,"hc":40000,"hw":20000,"hg":40000,"hn":4,'
    b'"hwn":2,"hf":1,"base":0,"basen":0,"hrs":0,"act":0,"skip":false,"_r":2},"CF-012":{"dev":{"d1":'
    b'1767225783000},"ip":{"ip0":1767225722000,"ip1":1767225783000}},"CF-006":{"win":{"b":null,"cur":{},'
    b'"prev":{}}}},"o":3}'
)
# The same version's state of device "d1" after ``_obs(0..2)`` from accounts acct-0..2.
LEGACY_FINGERPRINT = (
    b'{"d":{"_":{"id":"d1","plan":"FREE","first":1767225600000,"last":1767225722000,"n":3,"ne":1,'
    b'"ea":1767225661000,"flag":0,"ids":["e0","e1","e2"],"win":{"b":20454,"cur":{"TOOL_USE":20000,'
    b'"sub":15000,"gf":30000,"STANDARD_CHAT":10000},"prev":{}},"g":{},"kind":"device"},"CF-004":{"a":'
    b'{"acct-0":[1767225600000,10000,5000,"FREE",1767225600000,false],"acct-1":[1767225661000,10000,5000,'
    b'"FREE",1767225661000,false],"acct-2":[1767225722000,10000,5000,"FREE",1767225722000,false]},"_r":2},'
    b'"CF-005":{"a":{"acct-0":[1767225600000,1767225600000,false,null,"FREE"],"acct-1":[1767225661000,'
    b'1767225661000,false,null,"FREE"],"acct-2":[1767225722000,1767225722000,false,null,"FREE"]},"_r":2}},'
    b'"o":{"0":7}}'
)


def _obs(i: int, **kw: Any) -> dict[str, Any]:
    return {"event_id": f"e{i}", "account_id": "acct-1", "occurred_at": START + i * 61_000, "plan": "FREE",
            "category": ["TOOL_USE", "STANDARD_CHAT"][i % 2], "model": "m",
            "outcome": "REFUSED" if i == 2 else "SUCCESS", "error_code": None, "input_tokens": 1000,
            "output_tokens": 500, "context_window_tokens": 2000, "context_uniqueness": None,
            "reasoning_steps": 0, "thinking_tokens": 0, "tool_calls": 1, "list_micro": 15_000,
            "charged_micro": 10_000, "grant_funded_micro": 10_000, "debits": [["g1", 10_000, 40_000 - 10_000 * i]],
            "ip_hash": f"ip{i % 2}", "device_hash": "d1", "payment_hash": None, "prompt_fingerprint": "p1", **kw}


def _account_state(engine: DetectorEngine) -> dict[str, Any]:
    state: dict[str, Any] = {}
    engine.observe_grant(state, {"grant_id": "g1", "account_id": "acct-1", "event_type": "ISSUED",
                                 "occurred_at": START - 60_000, "granted_at": START - 60_000,
                                 "expires_at": START + 3 * 86_400_000, "amount_micro": 50_000, "campaign": "welcome"})
    for i in range(4):
        engine.observe_account(state, _obs(i))
    return state


def _fingerprint_state(engine: DetectorEngine) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for i in range(3):
        engine.observe_fingerprint("device", state, _obs(i, account_id=f"acct-{i}"))
    return state


def test_a_legacy_account_state_loads_as_the_records_this_version_builds_from_the_same_events() -> None:
    value = DETECTOR_TABLE_CODEC.decode(LEGACY_ACCOUNT)
    assert value["o"] == 3
    legacy = value["d"]
    assert legacy == _account_state(DetectorEngine(eval_every_events=4))
    common = legacy["_"]
    assert isinstance(common, CommonState)
    assert (common.entity_id, common.events, common.events_since_evaluation, common.evaluated_at) == (
        "acct-1", 4, 1, 1767225722000)
    assert common.new_account and common.grants["g1"].debits == 4 and common.grants["g1"].campaign == "welcome"
    spike = legacy["CF-011"]
    assert isinstance(spike, SpikeState)
    assert (spike.revision, spike.hour_requests, spike.hour_failed_requests) == (2, 4, 1)
    assert legacy["CF-003"].recent_weighted_requests == 2  # a key the dict version added lazily


def test_a_legacy_fingerprint_state_loads_as_the_records_this_version_builds() -> None:
    value = DETECTOR_TABLE_CODEC.decode(LEGACY_FINGERPRINT)
    assert value["o"] == {"0": 7}
    assert value["d"] == _fingerprint_state(DetectorEngine(eval_every_events=4))
    assert value["d"]["_"].kind == "device"
    assert value["d"]["CF-004"].accounts["acct-2"].grant_funded_micro == 10_000


def test_a_loaded_legacy_state_carries_on_like_one_built_here() -> None:
    engine = DetectorEngine(eval_every_events=4)
    legacy = DETECTOR_TABLE_CODEC.decode(LEGACY_ACCOUNT)["d"]
    native = _account_state(engine)
    later = [_obs(i, occurred_at=START + 2 * 3_600_000 + i * 1_000) for i in range(4, 60)]
    fired_legacy = [f for o in later for f in engine.observe_account(legacy, o)]
    fired_native = [f for o in later for f in engine.observe_account(native, o)]
    assert fired_legacy == fired_native
    assert legacy == native


def test_this_version_writes_the_keys_the_dict_version_reads() -> None:
    # Every key the dict version wrote is written again, with the same value: a worker of that
    # version (a rolling upgrade, a rollback) reads what this one wrote.
    legacy = orjson.loads(LEGACY_ACCOUNT)
    rewritten = orjson.loads(DETECTOR_TABLE_CODEC.encode(DETECTOR_TABLE_CODEC.decode(LEGACY_ACCOUNT)))

    def contained(old: Any, new: Any, path: str) -> None:
        if isinstance(old, dict):
            for k, v in old.items():
                assert k in new, f"{path}.{k}"
                contained(v, new[k], f"{path}.{k}")
        else:
            assert old == new, path

    contained(legacy, rewritten, "")
    fp = orjson.loads(DETECTOR_TABLE_CODEC.encode(DETECTOR_TABLE_CODEC.decode(LEGACY_FINGERPRINT)))
    contained(orjson.loads(LEGACY_FINGERPRINT), fp, "")


def test_slots_of_another_revision_or_of_no_rule_are_dropped_and_the_rule_starts_afresh() -> None:
    raw = orjson.loads(LEGACY_ACCOUNT)["d"]
    raw["CF-001"]["_r"] = 1  # written by revision 1 of CF-001 (now revision 2)
    raw["CF-099"] = {"x": 1}  # a rule that no longer exists
    for state in (decode_detector_state(raw), DETECTOR_TABLE_CODEC.decode(orjson.dumps({"d": raw, "o": 3}))["d"]):
        assert "CF-001" not in state and "CF-099" not in state
        assert state["CF-011"].hour_requests == 4
    engine = DetectorEngine(eval_every_events=4)
    state = decode_detector_state(raw)
    engine.observe_account(state, _obs(4))
    assert state["CF-001"].revision == 2 and sum(state["CF-001"].counts) == 1


def test_a_slot_that_does_not_fit_its_record_is_dropped_alone() -> None:
    raw = orjson.loads(LEGACY_ACCOUNT)
    raw["d"]["CF-011"]["hc"] = "forty"  # no number at all: the spike rule starts afresh
    raw["d"]["CF-009"]["base"] = 12.0  # an exact float still loads as the integer it is
    value = DETECTOR_TABLE_CODEC.decode(orjson.dumps(raw))
    assert "CF-011" not in value["d"]
    assert value["d"]["CF-009"].baseline_micro == 12
    assert value["d"]["_"].events == 4 and value["o"] == 3


def test_a_legacy_confirmed_verdict_before_any_event_loads_and_the_first_event_names_the_account() -> None:
    # The dict version's ``mark_confirmed`` on an account with no state yet wrote only the flag.
    value = DETECTOR_TABLE_CODEC.decode(b'{"d":{"_":{"flag":4611686018427387904}},"o":-1}')
    state = value["d"]
    assert state["_"].flagged_until == 1 << 62
    DetectorEngine().observe_account(state, _obs(0))
    assert state["_"].entity_id == "acct-1" and state["_"].events == 1 and state["_"].flagged_until == 1 << 62


def test_a_pending_fingerprint_sighting_passes_through() -> None:
    payload = b'{"p":["e1","acct-1",1767225600000,"FREE","TOOL_USE",1,1,0,[["g1",1,0]],false,"d1"],"o":{"3":12}}'
    value = DETECTOR_TABLE_CODEC.decode(payload)
    assert value == orjson.loads(payload)
    assert orjson.loads(DETECTOR_TABLE_CODEC.encode(value)) == orjson.loads(payload)


def test_whatever_else_the_engine_keeps_in_the_tables_passes_through_as_json() -> None:
    # Held observations beside a fingerprint's state, a partition's source clocks: the engine's.
    observation = {"event_id": "e1", "debits": [["g", 1, 0]]}
    held = {"d": {}, "o": {"0": 7, "3": 2}, "held": [[1767225600000, 0, 7, observation]]}
    clocks = {"time": {"0": 1767225600000, "5": 1767225700000}, "idle": [2, 4]}
    for value in (held, clocks, {"o": -1}, {"d": {}, "o": 12345678901234567890123}):
        assert DETECTOR_TABLE_CODEC.decode(DETECTOR_TABLE_CODEC.encode(value)) == value
    assert b'"held":[' in DETECTOR_TABLE_CODEC.encode(held)  # the recovery marker of held observations


def test_encode_detector_state_gives_builtins_with_the_short_keys_and_decodes_back() -> None:
    state = _account_state(DetectorEngine(eval_every_events=4))
    raw = encode_detector_state(state)
    assert raw["_"]["ne"] == 1 and raw["CF-011"]["hf"] == 1 and raw["CF-001"]["_r"] == 2
    assert orjson.loads(orjson.dumps(raw)) == raw  # JSON-able as it is
    assert decode_detector_state(raw) == state
    assert decode_detector_state(msgspec.json.encode(state)) == state
