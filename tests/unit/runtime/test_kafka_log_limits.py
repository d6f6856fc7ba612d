"""Repeated Kafka client log lines are let through at a bounded rate, with a count of the rest."""

from __future__ import annotations

import io
import logging

from streams.runtime.kafka_log_limits import RepeatLimiter, limit_kafka_logs


def _logger(name: str, limiter: RepeatLimiter) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    logger = logging.getLogger(name)
    logger.handlers = [logging.StreamHandler(out)]
    logger.propagate = False
    logger.filters = [limiter]
    return logger, out


def test_one_line_per_kind_per_interval_with_a_count() -> None:
    now = [0.0]
    logger, out = _logger("aiokafka.test_limit", RepeatLimiter(10.0, clock=lambda: now[0]))
    for i in range(100):  # 50 s of a failure every half second
        now[0] = i * 0.5
        logger.error("Unable connect to %r: %s", "node-1", i)
        logger.warning("Got error produce response: %s", "NodeNotReadyError")
    lines = out.getvalue().splitlines()
    connects = [ln for ln in lines if ln.startswith("Unable connect")]
    assert connects == ["Unable connect to 'node-1': 0"] + [
        f"Unable connect to 'node-1': {i} [19 more like this in the last 10s]" for i in (20, 40, 60, 80)]
    assert len([ln for ln in lines if ln.startswith("Got error")]) == 5


def test_a_percent_sign_in_an_argument_survives() -> None:
    now = [0.0]
    logger, out = _logger("aiokafka.test_percent", RepeatLimiter(1.0, clock=lambda: now[0]))
    logger.error("value %s", "100%")
    logger.error("value %s", "100%")
    now[0] = 2.0
    logger.error("value %s", "50%s")
    assert out.getvalue().splitlines() == ["value 100%", "value 50%s [1 more like this in the last 1s]"]


def test_zero_interval_lets_everything_through() -> None:
    logger, out = _logger("aiokafka.test_zero", RepeatLimiter(0.0))
    for _ in range(3):
        logger.error("same")
    assert out.getvalue().splitlines() == ["same"] * 3


def test_attached_to_every_aiokafka_logger_once() -> None:
    limiter = limit_kafka_logs(5.0)
    again = limit_kafka_logs(7.0)
    for name in ("aiokafka", "aiokafka.conn", "aiokafka.consumer.group_coordinator", "aiokafka.producer.sender"):
        attached = [f for f in logging.getLogger(name).filters if isinstance(f, RepeatLimiter)]
        assert attached == [limiter]
    assert again is limiter and limiter.interval == 7.0
