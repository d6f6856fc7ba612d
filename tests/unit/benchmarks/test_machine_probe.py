"""The machine-speed probe the benchmark takes between its stages."""

from __future__ import annotations

from tests.benchmarks.machine_probe import MachineSpeed, Probe


def test_probe_does_the_same_work_every_time() -> None:
    probe = Probe(events=50)
    assert probe.once() == probe.once() > 0
    assert probe.measure(repetitions=2) > 0


def test_points_summary_and_note() -> None:
    speed = MachineSpeed(probe=Probe(events=50))
    assert speed.note() is None  # one point says nothing about drift
    speed.take("start")
    speed.take("processor")
    speed.points[1]["us_per_event"] = speed.points[0]["us_per_event"] * 1.5  # as if the host slowed down
    summary = speed.summary()
    assert summary["runs"] == 2 and [p["after"] for p in summary["points"]] == ["start", "processor"]
    assert abs(summary["drift"] - 0.5) < 1e-9
    note = speed.note()
    assert note is not None and "moved 50%" in note and "slowest" in note and "(after processor)" in note
