"""Detector state in the changelog: typed records in memory, compact JSON on the wire.

An entity's detector state is a dict of typed records (``"_"`` -> ``CommonState``, each rule's id ->
its ``RuleState``; see ``streams/detection/rules/base.py``). On the wire every record field goes
under its short name, the key the earlier, dict-based versions used, so:
- the changelog stays as compact as it was, and is written by msgspec's encoder straight from the
  records (no intermediate dicts);
- what earlier versions wrote (the short-key dicts) loads as it is: every field has a default, so a
  key those versions only added lazily (``nd``, ``hf``, ``basen``, ``new``, ...) may be missing;
- what this version writes, earlier versions read too (every field is written, defaults included).

A rule slot written by another revision of its rule (``"_r"``), or by a rule that no longer exists,
is dropped on load: the rule starts afresh rather than misread it (``Detector.slot``).

The detection tables' values keep their outer wrappers (``streams/detection/engine.py``): accounts
``{"d": detector state, "o": offset}``, fingerprints ``{"d" | "p": ..., "o": ..., "held": ...}`` and
the partitions' source clocks. ``DETECTOR_TABLE_CODEC`` reads and writes those whole values for
``ChangelogTable``: only a wrapper's ``"d"`` is typed, the rest is JSON as the engine wrote it.
"""

from __future__ import annotations

import logging
from typing import Any, TypedDict

import msgspec

from streams.detection.rulebook import DETECTORS_BY_ID
from streams.detection.rules.base import CommonState, State

log = logging.getLogger("creditflow.detection")

# The detector state as msgspec decodes it in one pass: "_" and one optional key per rule id (ids
# are not identifiers, hence the functional form, which mypy cannot follow); keys of rules that no
# longer exist are skipped.
_typed_dict: Any = TypedDict  # built from the rule book at import: mypy only checks literal ones
_DetectorStateDict: Any = _typed_dict(
    "_DetectorStateDict",
    {"_": CommonState, **{rule_id: det.state_type for rule_id, det in DETECTORS_BY_ID.items()}},
    total=False,
)

_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()  # any JSON; exact integers of any size, unlike orjson
_state_decoder = msgspec.json.Decoder(_DetectorStateDict)


def encode_detector_state(state: State) -> Any:
    """The detector state as JSON-able builtins, with the records' short wire names."""
    return msgspec.to_builtins(state)


def decode_detector_state(raw: Any) -> State:
    """A detector state from builtins (``encode_detector_state``'s output, or the short-key dicts
    earlier versions wrote), or from its JSON bytes."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        try:
            return _current_revisions(_state_decoder.decode(raw))
        except msgspec.ValidationError:
            raw = msgspec.json.decode(raw)
    try:
        return _current_revisions(msgspec.convert(raw, _DetectorStateDict))
    except msgspec.ValidationError:
        return _slot_by_slot(raw)


def _current_revisions(state: dict[str, Any]) -> State:
    for rule_id in [k for k, v in state.items() if k != "_" and v.revision != DETECTORS_BY_ID[k].revision]:
        del state[rule_id]
    return state


def _slot_by_slot(raw: dict[str, Any]) -> State:
    """The tolerant path, for a state the one-pass decode refused: each slot on its own, numbers
    converted where that is exact, and a rule slot that still does not fit dropped (the rule
    starts afresh) rather than the whole entity lost."""
    out: State = {}
    if "_" in raw:
        out["_"] = msgspec.convert(raw["_"], CommonState, strict=False)
    for rule_id, slot in raw.items():
        det = DETECTORS_BY_ID.get(rule_id)
        if det is None or not isinstance(slot, dict) or slot.get("_r", 1) != det.revision:
            continue
        try:
            out[rule_id] = msgspec.convert(slot, det.state_type, strict=False)
        except msgspec.ValidationError as exc:
            log.warning("dropping %s state that does not load (%s): the rule starts afresh", rule_id, exc)
    return out


class DetectorTableCodec:
    """``ChangelogTable`` codec of the detector-accounts and detector-fingerprints tables. Their
    values are the engine's, whatever their shape (wrappers with held observations, partitions'
    source clocks): everything but a wrapper's ``"d"`` is plain JSON, read back as it was written."""

    @staticmethod
    def encode(value: Any, /) -> bytes:
        return _encoder.encode(value)

    @staticmethod
    def decode(payload: bytes | memoryview, /) -> Any:
        value = _json_decoder.decode(payload)
        if type(value) is dict and "d" in value:
            value["d"] = decode_detector_state(value["d"])
        return value


DETECTOR_TABLE_CODEC = DetectorTableCodec()
