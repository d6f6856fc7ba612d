"""Pieces shared by the benchmark orchestrator (``run.py``) and the measured subprocesses.

Every measured role runs in its own Python process so CPU time and peak RSS belong to that role
alone (``resource.getrusage(RUSAGE_SELF)`` covers all of its threads, chDB's included). The
orchestrator talks to a subprocess through one JSON config argument and line-oriented stdout:

    READY                 the role is started and has its partitions (latency runs wait for it)
    PROGRESS <n>          units done so far (events metered / rows stored), for the progress bar
    RESULT <json>         the figures of the run; always the last line

Timestamps that cross processes are wall-clock ``time.time()`` on one machine.
"""

from __future__ import annotations

import contextlib
import json
import resource
import sys
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

# Topics read by the processor (and by the sink, for grants/reviews): they keep the workload's
# prefix so every run reads the same pre-produced data. All other topics get a fresh per-run prefix.
INPUT_TOPICS = frozenset({"interaction-events", "credit-grants", "subscription-changes", "gaming-reviews"})


def split_topic_names(input_prefix: str, output_prefix: str) -> dict[str, str]:
    """Base name -> topic name, inputs under ``input_prefix`` and outputs under ``output_prefix``."""
    from streams.runtime.topics import TOPICS

    return {s.name: (input_prefix if s.name in INPUT_TOPICS else output_prefix) + s.name for s in TOPICS}


def install_split_topics(input_prefix: str, output_prefix: str) -> None:
    """Make ``create_app`` read the shared pre-produced inputs but write fresh outputs.

    ``Settings`` has one ``topic_prefix`` for inputs and outputs alike; without this every run would
    need its own copy of a 1M-event input topic. ``streams.app.create_app`` imports ``topic_names``
    at call time, so replacing the module attribute is enough (see the proposed
    ``input_topic_prefix`` setting in tests/benchmarks/README.md, which would make this unnecessary).
    """
    import streams.runtime.topics as topics_mod

    names = split_topic_names(input_prefix, output_prefix)
    topics_mod.topic_names = lambda settings: dict(names)  # type: ignore[assignment]


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def peak_rss_bytes() -> int:
    """Peak resident memory of this process's own address space."""
    # Not ru_maxrss where /proc has VmHWM: Linux carries ru_maxrss across fork and exec, so a worker
    # reported the orchestrator's RSS at the moment it was spawned whenever that was higher (994 MiB
    # "with 1M accounts" was the orchestrator after generating that workload; the worker peaked at
    # ~800). VmHWM starts again with the new program.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def emit(line: str) -> None:
    # The orchestrator may be gone (interrupted): nobody to report to, and not a reason to crash.
    with contextlib.suppress(BrokenPipeError, ValueError):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def emit_result(result: Mapping[str, Any]) -> None:
    emit("RESULT " + json.dumps(result, default=str))


def now() -> float:
    return time.time()


async def end_offsets_total(bootstrap: str, topic: str, partitions: int) -> int:
    """Sum of the end offsets of ``topic`` (records ever written to a fresh topic)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        offsets = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return int(sum(offsets.values()))
    finally:
        await consumer.stop()


class OffsetWatcher:
    """Polls the end offsets of one topic with a long-lived consumer (cheap enough at 10 Hz)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)

    async def __aenter__(self) -> OffsetWatcher:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def total(self) -> int:
        offsets = await self.consumer.end_offsets(self.tps)
        return int(sum(offsets.values()))
