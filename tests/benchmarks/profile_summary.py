"""Where the processor's time goes: pyinstrument samples folded into pipeline stages, plus exact
per-event micro-timings of the pure steps (no Kafka, no Faust) to cross-check them."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

# (category, predicate on (function, file path)). A frame takes the first matching category; a
# frame matching none inherits its caller's, so e.g. lz4 under aiokafka's producer is "producer".
_RULES: tuple[tuple[str, Callable[[str, str], bool]], ...] = (
    ("decode (fastavro read)", lambda f, p: p.endswith("streams/wire/codec.py") and f in ("decode", "_read_body")),
    ("encode outputs (fastavro write)", lambda f, p: p.endswith("streams/wire/codec.py")
     and f in ("encode_single_object", "_body", "encode_single_object_with")),
    ("encode outputs (fastavro write)", lambda f, p: p.endswith("streams/wire/dead_letters.py")),
    ("validate", lambda f, p: p.endswith("streams/wire/validation.py")),
    ("sampling hash", lambda f, p: p.endswith("streams/credits/policy.py") and f == "should_sample"),
    ("classify + price", lambda f, p: p.endswith("streams/credits/policy.py")),
    ("grant debit", lambda f, p: p.endswith("streams/credits/ledger.py")),
    ("table writes (changelog)", lambda f, p: p.endswith("streams/runtime/changelog.py")),
    ("meter: record dicts, state copies", lambda f, p: p.endswith("streams/credits/meter.py")),
    ("producer send (aiokafka)", lambda f, p: p.endswith("streams/runtime/batch_send.py")),
    # The processor role hosts the detector service; without these its frames would fall to the
    # mode service frames above them.
    ("detector: observe, fold, fingerprint messages, state JSON", lambda f, p: "streams/detection/rules/" in p
     or p.endswith("streams/detection/engine.py") or p.endswith("streams/detection/alerts.py")),
    ("batch skeleton (partitioned.py, processor.py)", lambda f, p: p.endswith("streams/runtime/partitioned.py")
     or p.endswith("streams/processor.py")),
    ("producer send (aiokafka)", lambda f, p: "/aiokafka/producer/" in p),
    ("kafka fetch (aiokafka consumer)", lambda f, p: "/aiokafka/consumer/" in p),
    ("idle / waiting on I/O", lambda f, p: f in ("select", "poll", "epoll") or p.endswith("selectors.py")),
    ("faust/mode service overhead", lambda f, p: "/faust/" in p or "/mode/" in p),
    ("asyncio event loop", lambda f, p: "/asyncio/" in p),
)


def _category(function: str, path: str) -> str | None:
    for name, test in _RULES:
        if test(function, path):
            return name
    return None


def categorise(root: Any, events: int, duration: float) -> dict[str, Any]:
    """Self time per category (s, % of samples, µs per event) from a pyinstrument frame tree."""
    totals: dict[str, float] = {}
    functions: dict[str, float] = {}

    def walk(frame: Any, inherited: str, caller: str) -> None:
        function = frame.function or ""
        cat = _category(function, frame.file_path or "") or inherited
        # Own time = total minus children's totals (pyinstrument's synthetic "[self]" children
        # already hold part of it, so total_self_time would count that twice).
        own = max(frame.time - sum(child.time for child in frame.children), 0.0)
        totals[cat] = totals.get(cat, 0.0) + own
        name = caller if frame.is_synthetic else f"{function} ({frame.file_path_short or '?'})"
        functions[name] = functions.get(name, 0.0) + own
        for child in frame.children:
            walk(child, cat, name)

    if root is not None:
        walk(root, "other", "?")
    sampled = sum(totals.values()) or 1.0
    rows = sorted(totals.items(), key=lambda kv: -kv[1])
    return {
        "events": events,
        "duration_s": duration,
        "sampled_s": sampled,
        "categories": [
            {"category": k, "seconds": round(v, 3), "share": round(v / sampled, 4),
             "us_per_event": round(v / events * 1e6, 2) if events else None}
            for k, v in rows
        ],
        # Where own (exclusive) time is spent, function by function: what the categories hide.
        "top_functions": [
            {"function": k, "seconds": round(v, 3), "share": round(v / sampled, 4)}
            for k, v in sorted(functions.items(), key=lambda kv: -kv[1])[:30]
        ],
    }


def micro_timings(events: Sequence[dict[str, Any]], encoded: Sequence[bytes]) -> dict[str, float]:
    """µs per event of each pure step, measured in-process on the given events."""
    from streams.credits.meter import Meter, RawRecord
    from streams.credits.policy import load_policy, price_event
    from streams.wire.codec import Decoder, encode_single_object
    from streams.wire.validation import validate_event

    policy = load_policy()
    dec = Decoder("InteractionEvent")
    n = len(encoded)
    out: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        value = fn()
        out[name] = round((time.perf_counter() - t0) / n * 1e6, 2)
        return value

    decoded = timed("decode", lambda: [dec.decode(b) for b in encoded])
    now_ms = time.time_ns() // 1_000_000
    timed("validate", lambda: [validate_event(e, now_ms) for e in decoded])

    def price_all() -> None:
        for e in decoded:
            price = policy.price_for(e["model"])
            assert price is not None
            price_event(policy, price, e)

    timed("classify + price", price_all)
    meter = Meter(policy, Decoder("InteractionEvent"), Decoder("CreditGrant"))
    records = [RawRecord("t", i % 6, i, None, b) for i, b in enumerate(encoded)]
    empty: dict[str, Any] = {}
    result = timed("Meter.meter total (decode..record dicts)",
                   lambda: meter.meter(records, empty.get, empty.get, now_ms))
    timed("encode UsageEnriched output", lambda: [encode_single_object(r, "UsageEnriched") for r in result.enriched])
    out["samples per event"] = round(len(result.samples) / max(n, 1), 4)
    return out
