"""The benchmark's command line: options that cannot work are refused in one line."""

from __future__ import annotations

import pytest

from tests.benchmarks.run import parse_args


def test_quick_latency_runs_keep_a_measured_part_after_the_warm_up() -> None:
    o = parse_args(["--quick"])
    assert 0 < o.latency_warmup_s < o.latency_seconds


def test_latency_warm_up_as_long_as_the_run_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["--latency-seconds", "5", "--latency-warmup", "5"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("--latency-warmup must be at least 0 and shorter than the run (5 s)")


def test_latency_rate_given_skips_deriving_it() -> None:
    o = parse_args(["--latency-rate", "1200", "--stages", "latency"])
    assert o.latency_rate == 1200 and o.stages == frozenset({"latency"})


def test_a_full_run_leaves_the_profile_out_unless_asked() -> None:
    from tests.benchmarks.run import STAGES

    assert "profile" not in parse_args([]).stages
    assert parse_args([]).stages == frozenset(STAGES) - {"profile"}
    assert "profile" in parse_args(["--stages", "processor,profile"]).stages


def test_an_unknown_stage_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["--stages", "processor,sinks"])
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--stages takes processor,sink," in last and last.endswith("unknown: sinks")
