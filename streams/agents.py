"""Faust agents of the processor role: thin wiring around the pure meter.

Order inside one batch is what makes a crash harmless (see ``streams/meter.py``):
outputs are published and acknowledged first, then account state is written, then Faust acks the
batch; Faust flushes the changelog before it commits offsets.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, cast

import faust

from streams.codec import Decoder, SchemaRegistryClient, encode_single_object
from streams.dead_letters import encode_dead_letter
from streams.meter import Meter, MeterResult, RawRecord
from streams.policy import load_policy
from streams.settings import Settings
from streams.state import put

log = logging.getLogger("creditflow.processor")

# An unexpected error inside a batch body must not let Faust ack (and later commit) the batch.
_CRASH_EXIT_CODE = 70


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _raw(events: Iterable[faust.EventT]) -> list[RawRecord]:
    out = []
    for e in events:
        m = e.message
        headers = m.headers or ()
        if isinstance(headers, Mapping):
            headers = list(headers.items())
        out.append(RawRecord(m.topic, m.partition, m.offset, m.key, m.value, list(headers)))
    return out


def _die(what: str, exc: BaseException) -> None:
    log.critical("%s failed; exiting without acknowledging the batch so it is replayed: %r", what, exc,
                 exc_info=exc)
    logging.shutdown()
    os._exit(_CRASH_EXIT_CODE)


def register_processor(app: faust.App, settings: Settings, names: Mapping[str, str]) -> None:
    policy = load_policy(settings.policy_path)
    registry = SchemaRegistryClient(settings.schema_registry_url) if settings.schema_registry_url else None
    meter = Meter(policy, Decoder("InteractionEvent", registry), Decoder("CreditGrant", registry))

    events_topic = app.topic(names["interaction-events"])
    grants_topic = app.topic(names["credit-grants"])
    enriched_topic = names["usage-enriched"]
    dead_topic = names["dead-letters"]
    refinement_topic = names["refinement-feed"]

    # Per-account state, co-partitioned with the input topics (both keyed by account id).
    usage = app.Table("account-usage", partitions=settings.partitions, key_type=str,
                      )
    grants = app.Table("account-grants", partitions=settings.partitions, key_type=str,
                       )

    async def publish(result: MeterResult) -> None:
        producer = app.producer
        pending: list[Awaitable[Any]] = []
        for rec in result.enriched:
            # Same partition as the input: the sink's replay guard relies on one input partition
            # feeding exactly one output partition, in order.
            pending.append(await producer.send(
                enriched_topic, rec["account_id"].encode(), encode_single_object(rec, "UsageEnriched"),
                rec["source_partition"], None, None))
        for s in result.samples:
            pending.append(await producer.send(
                refinement_topic, s["account_id"].encode(), encode_single_object(s, "RefinementSample"),
                None, None, None))
        for d in result.dead_letters:
            pending.append(await producer.send(
                dead_topic, d["dead_letter_id"].encode(), encode_dead_letter(d), None, None, None))
        if pending:
            await asyncio.gather(*pending)

    @app.agent(events_topic, name="meter")
    async def meter_agent(stream: faust.StreamT) -> None:
        async for batch in cast(faust.Stream, stream).take_events(settings.process_batch, within=settings.process_within):
            try:
                result = meter.meter(_raw(batch), usage.data.get, grants.data.get, _now_ms())
                await publish(result)
                for account, (partition, state) in result.usage_updates.items():
                    put(usage, partition, account, state)
            except Exception as exc:
                _die("metering a batch", exc)

    @app.agent(grants_topic, name="grants")
    async def grants_agent(stream: faust.StreamT) -> None:
        async for batch in cast(faust.Stream, stream).take_events(1000, within=settings.process_within):
            try:
                result = meter.grants(_raw(batch), grants.data.get, _now_ms())
                await publish(result)
                for account, (partition, state) in result.grant_updates.items():
                    put(grants, partition, account, state)
            except Exception as exc:
                _die("applying grants", exc)
