"""How fast this machine is right now: a fixed slice of the processor's own kind of work, timed
between the benchmark's stages.

A shared VM's speed moves while the benchmark runs. Here the in-process processor took 116 CPU-µs
per event at the start of one hour and 175 later in the same hour, with nothing else running. A
figure is only comparable with another one measured at the same machine speed, so the benchmark
times this probe before its first stage, after every stage and at the end, and reports the points
and how far they moved. A drift of a few percent is noise; tens of percent means the run's figures
tell more about the host than about the code.

The probe decodes and re-encodes fixed InteractionEvents (fastavro, single-object encoding; fastavro
rather than the codec's cavro path, so readings compare with runs from before it), classifies
and prices them with the project's pure policy functions, and writes them as JSON: single-threaded
Python and C-extension work, as the processor does. It takes 0.2-0.4 s. The figure is CPU time
(``time.process_time``), the best of a few repetitions, so a pause of the runner is not counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas.catalogue import get_catalogue
from streams.credits.policy import load_policy, price_event
from streams.synthetic.generator import Generator
from streams.wire.codec import Decoder, encode_single_object_with
from tests.benchmarks import report

EVENTS = 2_000
REPETITIONS = 5


class Probe:
    """The fixed work: built once, timed many times."""

    def __init__(self, events: int = EVENTS) -> None:
        self.sv = get_catalogue().latest("InteractionEvent")
        self.decoder = Decoder("InteractionEvent", fast=False)
        self.policy = load_policy()
        gen = Generator(accounts=100, seed=7)
        self.encoded = [encode_single_object_with(ev, self.sv, fast=False) for ev in gen.events(events)]

    def once(self) -> int:
        """One pass over the events; returns a checksum of what it computed (so nothing is skipped)."""
        policy, sv, total = self.policy, self.sv, 0
        for data in self.encoded:
            ev = self.decoder.decode(data)
            price = policy.price_for(ev["model"])
            if price is None:
                continue
            total += price_event(policy, price, ev)[1].charged_micro
            total += len(encode_single_object_with(ev, sv, fast=False)) + len(orjson.dumps(ev))
        return total

    def measure(self, repetitions: int = REPETITIONS) -> float:
        """CPU-µs per event, the best of ``repetitions`` passes."""
        best = float("inf")
        for _ in range(repetitions):
            start = time.process_time()
            self.once()
            best = min(best, time.process_time() - start)
        return best / len(self.encoded) * 1e6


@dataclass
class MachineSpeed:
    """The probe's points through one benchmark run."""

    probe: Probe = field(default_factory=Probe)
    started: float = field(default_factory=time.monotonic)
    points: list[dict[str, Any]] = field(default_factory=list)

    def take(self, after: str) -> float:
        us = self.probe.measure()
        self.points.append({"after": after, "at_s": round(time.monotonic() - self.started, 1), "us_per_event": us})
        return us

    def summary(self) -> dict[str, Any]:
        values = [p["us_per_event"] for p in self.points]
        out: dict[str, Any] = {"unit": "CPU-µs per probe event (lower is faster)", "points": self.points,
                               **report.summary(values)}
        out["drift"] = self.drift()
        return out

    def drift(self) -> float | None:
        """Slowest point over fastest, minus one."""
        values = [p["us_per_event"] for p in self.points]
        return max(values) / min(values) - 1 if values and min(values) > 0 else None

    def note(self) -> str | None:
        """One line for the run's notes: how far the machine's speed moved, and where."""
        drift = self.drift()
        if len(self.points) < 2 or drift is None:
            return None
        slow = max(self.points, key=lambda p: p["us_per_event"])
        fast = min(self.points, key=lambda p: p["us_per_event"])
        return (f"machine speed probe moved {drift:.0%} during the run: fastest {fast['us_per_event']:.1f} µs "
                f"(after {fast['after']}), slowest {slow['us_per_event']:.1f} µs (after {slow['after']}); "
                "figures measured at different speeds compare only that far")
