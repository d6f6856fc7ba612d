"""Garbage-collector thresholds for worker processes.

A processor batch allocates millions of short-lived dicts and lists (decoded events, detector
observations, output records). Reference counting frees nearly all of them; the cyclic collector
only finds them already gone, but with CPython's default gen-0 threshold (700 allocations) it runs
thousands of times per batch and scans the young generation each time. Measured in-process on
the processor (100k events): 200 CPU-µs per event with the defaults, 142 with a gen-0 threshold of
50,000 and 140 with 200,000; freezing start-up objects alone changed nothing measurable. Cycles
are still collected, just in bigger, rarer passes.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

GEN0_THRESHOLD = 50_000


def tune_for_batches() -> None:
    """Raise the gen-0 threshold and move everything alive now (modules, schemas, policy) out of
    the collector's way; call once after start-up imports."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)


@contextmanager
def paused() -> Iterator[None]:
    """No cyclic collection inside one batch. A batch's objects live until it ends, so every
    collection during it scans them and promotes them, to be scanned again by the older
    generations; after the batch they are mostly freed by reference counting. Measured in-process
    (processor, 100k events, gen-0 threshold 50,000): 136 CPU-µs per event with collections
    during batches, 117 with collections only between them, 115 with the collector off."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
