"""Kafka client logs at a bounded rate while a broker is away.

aiokafka logs every failed reconnect, metadata refresh and coordinator lookup, many times a second
per client; a worker with a broker down for minutes wrote about a megabyte of them a minute. The
filter passes the first record of each kind (logger and message template) and then at most one per
interval, noting how many were held back, so the outage stays visible without drowning the log.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator

# Loggers of the Kafka clients the worker runs: aiokafka's, and Faust's transport wrapped round it.
PREFIXES = ("aiokafka", "faust.transport")


class RepeatLimiter(logging.Filter):
    """At most one record per ``interval`` seconds per (logger, message template)."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        # (logger, template) -> [time last passed, records held back since]; templates are finite.
        self._seen: dict[tuple[str, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if self.interval <= 0:
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval:
            seen[1] += 1
            return False
        held = int(seen[1]) if seen is not None else 0
        self._seen[key] = [now, 0]
        if held:
            # Appended to the formatted message, so a '%' in it cannot break the record's own args.
            record.msg = f"{record.getMessage()} [{held} more like this in the last {self.interval:g}s]"
            record.args = ()
        return True


# One limiter for the process, so every client's loggers share the same counts.
_LIMITER = RepeatLimiter(30.0)


def limit_kafka_logs(interval: float, names: Iterable[str] | None = None) -> RepeatLimiter:
    """Attach the process' limiter to every Kafka client logger (existing ones, and those named);
    idempotent. A logger filter sees only records created on that very logger, not those propagated
    from its children, hence one attachment per module logger."""
    # Imported so their module loggers exist to be found.
    for module in ("aiokafka.client", "aiokafka.conn", "aiokafka.consumer.group_coordinator",
                   "aiokafka.consumer.fetcher", "aiokafka.producer.sender"):
        importlib.import_module(module)
    wanted = set(names or ())
    wanted |= {name for name in logging.Logger.manager.loggerDict if name.startswith(PREFIXES)}
    _LIMITER.interval = interval
    for name in wanted:
        logger = logging.getLogger(name)
        if _LIMITER not in logger.filters:
            logger.addFilter(_LIMITER)
    return _LIMITER


@contextlib.contextmanager
def quiet_while_connecting(*names: str) -> Iterator[None]:
    """Hold back the clients' own error lines while they first connect (aiokafka's, and any other
    loggers named): a failure is reported once, by the caller, with its cause
    (``kafka_clients.describe_failure``), not as log lines plus an exception."""
    loggers = [logging.getLogger(name) for name in ("aiokafka", *names)]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
