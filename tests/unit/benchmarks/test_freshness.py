"""The freshness stage's arithmetic: which balance reflects an event, and percentiles."""

from __future__ import annotations

from tests.benchmarks.freshness import latencies_from_topic, percentile


def test_an_event_is_visible_with_the_first_balance_reaching_its_time() -> None:
    seen = {"a": [(100, 150.0), (130, 190.0)], "b": [(90, 400.0)]}
    # a@100 -> first balance (150); a@120 -> the second (190); b@95 never reflected; c never seen.
    assert latencies_from_topic([("a", 100), ("a", 120), ("b", 95), ("c", 1)], seen) == [50.0, 70.0]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None
