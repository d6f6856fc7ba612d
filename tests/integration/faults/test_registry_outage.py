"""A schema-registry outage against the real broker and ClickHouse engine.

The registry is a small fake (``tests/fake_registry.py``) on a free port, taken down and brought
back. Confluent-framed events whose schema id the worker has not seen wait, with their partition,
while the registry is down; every other partition (single-object traffic and ids known from disk
after a restart) goes on; once it is back the waiting events are metered exactly once and nothing
valid is dead-lettered. Bogus ids are dead-lettered as UNKNOWN_SCHEMA, one lookup each."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from schemas.catalogue import get_catalogue
from streams.runtime.batch_send import KeyPartitions
from streams.runtime.topics import ensure_topics
from streams.settings import Settings
from streams.synthetic.generator import Generator
from streams.wire.codec import encode_confluent, encode_single_object
from tests.fake_registry import FakeRegistry
from tests.integration.faults.intake_support import (  # noqa: F401  (fixtures)
    Raw,
    dead_letter_kinds,
    dead_letters,
    partition_lag,
    send_raw,
    settings,
    verify_exact,
    wait_until,
)
from tests.integration.harness import Worker, wait_drained

pytestmark = pytest.mark.integration

HELD = {0, 1}  # partitions whose accounts send events with a schema id the worker has not fetched


def test_registry_outage_holds_only_what_needs_it_and_meters_it_once_when_back(
        settings: Settings, workers: list[Worker], registry: FakeRegistry, tmp_path: Path) -> None:  # noqa: F811
    bootstrap = settings.kafka_bootstrap_servers or ""
    asyncio.run(ensure_topics(bootstrap, settings))
    sv = get_catalogue().latest("InteractionEvent")
    known_id = registry.register(sv.schema_json)
    # The same schema under a second id (a doc change): never fetched before the outage.
    unseen_id = registry.register(json.dumps({**sv.schema_json, "doc": "registered later"}))
    gen = Generator(accounts=60, seed=41, account_prefix="reg")
    grants = gen.grants()
    events = list(gen.events(1_800))
    parts = KeyPartitions(settings.partitions)

    def owner(ev: dict[str, Any]) -> int:
        return parts(ev["account_id"].encode())

    assert {owner(ev) for ev in events} >= {0, 1, 2, 3}

    def raw(ev: dict[str, Any], value: bytes) -> Raw:
        return ev["account_id"].encode(), value, [], None

    def confluent(ev: dict[str, Any], schema_id: int) -> Raw:
        return raw(ev, encode_confluent(ev, schema_id, sv.parsed))

    def single(ev: dict[str, Any]) -> Raw:
        return raw(ev, encode_single_object(ev, "InteractionEvent"))

    env = {"SCHEMA_REGISTRY_URL": registry.url, "CREDITFLOW_REGISTRY_WAIT_SECONDS": "0.5",
           "CREDITFLOW_REGISTRY_BACKOFF_MAX_SECONDS": "2"}
    worker = Worker(settings, "all", tmp_path, "registry", **env).start()
    workers.append(worker)
    send_raw(settings, "credit-grants",
             [(g["account_id"].encode(), encode_single_object(g, "CreditGrant"), [], None) for g in grants])
    group = f"{settings.app_id}-processor"
    # Grants first, so every debit is deterministic, as the recomputation assumes.
    wait_until("grants applied",
               lambda: sum(partition_lag(settings, group, settings.topic("credit-grants")).values()) == 0, workers)

    # 1. Registry up: the known id is fetched (and kept on disk).
    first, second, third = events[:600], events[600:1_200], events[1_200:]
    send_raw(settings, "interaction-events", [confluent(ev, known_id) for ev in first])
    wait_drained(settings, workers)

    # 2. Registry down, worker restarted: ids read before come from disk; an unseen id waits.
    registry.down()
    worker.stop()
    worker.start()
    phase2 = [confluent(ev, unseen_id) if owner(ev) in HELD
              else (confluent(ev, known_id) if i % 2 else single(ev)) for i, ev in enumerate(second)]
    send_raw(settings, "interaction-events", phase2)
    topic = settings.topic("interaction-events")
    wait_until("partitions without unseen ids drained while the registry is down",
               lambda: all(n == 0 for p, n in partition_lag(settings, group, topic).items() if p not in HELD),
               workers)
    held_events = sum(1 for ev in second if owner(ev) in HELD)
    time.sleep(5)  # several backoff rounds: still waiting, nothing given up on
    lag = partition_lag(settings, group, topic)
    assert sum(n for p, n in lag.items() if p in HELD) == held_events > 0, lag
    assert dead_letters(settings) == [], "a registry outage must not dead-letter valid events"
    assert worker.alive, worker.log_tail()

    # 3. Registry back: the waiting events are metered; bogus ids are dead-lettered, one lookup each.
    registry.up()
    bogus_ids = list(range(900_000, 900_150))
    bogus: list[Raw] = [(ev["account_id"].encode(), b"\x00" + bid.to_bytes(4, "big") + b"junk", [], None)
                        for ev, bid in zip(third, bogus_ids, strict=False)]
    mixed: list[Raw] = []
    for i, ev in enumerate(third):
        mixed.append(single(ev) if i % 2 else confluent(ev, unseen_id))
        if i < len(bogus):
            mixed.append(bogus[i])
    send_raw(settings, "interaction-events", mixed)
    wait_drained(settings, workers, timeout=300)
    assert worker.stop() == 0, worker.log_tail()

    verify_exact(settings, events, grants)
    assert dead_letter_kinds(settings) == Counter({"UNKNOWN_SCHEMA": len(bogus)})
    looked_up = Counter(registry.gets)
    assert all(looked_up[b] == 1 for b in bogus_ids), "a bogus id is looked up once, then remembered"
    assert looked_up[known_id] == 1, "a fetched id is read from disk after a restart"
