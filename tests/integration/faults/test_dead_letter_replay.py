"""Dead letters replayed after a fix, against the real broker and ClickHouse engine: events written
with a schema id the registry did not have yet are dead-lettered (UNKNOWN_SCHEMA); once the schema
is registered, ``creditflow dead-letters replay`` re-submits them, and running it twice re-submits
nothing more: every event is metered exactly once."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from schemas.catalogue import get_catalogue
from streams.runtime.topics import ensure_topics
from streams.settings import Settings
from streams.synthetic.generator import Generator
from streams.wire.codec import encode_confluent, encode_single_object
from streams.wire.headers import REPLAY_OF_HEADER
from tests.fake_registry import FakeRegistry
from tests.integration.faults.intake_support import (  # noqa: F401  (fixtures)
    Raw,
    dead_letters,
    partition_lag,
    read_topic,
    send_raw,
    settings,
    verify_exact,
    wait_until,
)
from tests.integration.harness import REPO, Worker, wait_drained

pytestmark = pytest.mark.integration

LATE_ID = 4_242  # the id producers used before anyone registered the schema under it


def _cli(worker: Worker, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "streams.cli.main", "dead-letters", *args], cwd=REPO,
                          env=worker.environment(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_dead_letters_replayed_twice_are_metered_once(settings: Settings, workers: list[Worker],  # noqa: F811
                                                      registry: FakeRegistry, tmp_path: Path) -> None:
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers or "", settings))
    sv = get_catalogue().latest("InteractionEvent")
    on_time = Generator(accounts=40, seed=61, account_prefix="rpl")
    late = Generator(accounts=10, seed=62, account_prefix="late")
    grants = on_time.grants() + late.grants()
    good = list(on_time.events(600))
    early = list(late.events(80))
    env = {"SCHEMA_REGISTRY_URL": registry.url, "CREDITFLOW_REGISTRY_NOT_FOUND_TTL_SECONDS": "1"}
    worker = Worker(settings, "all", tmp_path, "replay", **env).start()
    workers.append(worker)
    send_raw(settings, "credit-grants",
             [(g["account_id"].encode(), encode_single_object(g, "CreditGrant"), [], None) for g in grants])
    group = f"{settings.app_id}-processor"
    wait_until("grants applied",
               lambda: sum(partition_lag(settings, group, settings.topic("credit-grants")).values()) == 0, workers)
    records: list[Raw] = [(ev["account_id"].encode(), encode_single_object(ev, "InteractionEvent"), [], None)
                          for ev in good]
    for i, ev in enumerate(early):
        records.insert(i * 7, (ev["account_id"].encode(), encode_confluent(ev, LATE_ID, sv.parsed),
                               [("origin", b"late-service")], None))
    send_raw(settings, "interaction-events", records)
    wait_drained(settings, workers)
    dead = dead_letters(settings)
    assert len({d["dead_letter_id"] for d in dead}) == len(early)
    assert {d["error_kind"] for d in dead} == {"UNKNOWN_SCHEMA"}

    listed = [json.loads(line) for line in _cli(worker, "list", "--json", "--kind", "UNKNOWN_SCHEMA",
                                                "--topic", "interaction-events", "--limit", "1000").splitlines()]
    assert len(listed) == len(early) and not any(d["replayed"] for d in listed)

    registry.schemas[LATE_ID] = json.dumps(sv.schema_json)  # the fix: the schema is registered
    time.sleep(1.5)  # past the workers' memory of "not found"
    assert f"replayed {len(early)} dead letter(s)" in _cli(worker, "replay", "--kind", "UNKNOWN_SCHEMA")
    assert "replayed 0 dead letter(s)" in _cli(worker, "replay", "--kind", "UNKNOWN_SCHEMA")
    wait_drained(settings, workers)
    assert worker.stop() == 0, worker.log_tail()

    resubmitted = [r for r in read_topic(settings, settings.topic("interaction-events"))
                   if any(k == REPLAY_OF_HEADER for k, _ in r.headers)]
    assert len(resubmitted) == len(early), "each dead letter re-submitted once"
    assert all(("origin", b"late-service") in r.headers for r in resubmitted), "original headers kept"
    listed = [json.loads(line) for line in _cli(worker, "list", "--json", "--limit", "1000").splitlines()]
    assert len(listed) == len(early) and all(d["replayed"] for d in listed)
    verify_exact(settings, good + early, grants)


def test_two_replays_at_once_resubmit_each_dead_letter_once(settings: Settings,  # noqa: F811
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A replay paused after reading the markers while another replay runs whole: the paused one was
    fenced when the other started, so it cannot re-submit what the other just did."""
    from streams.runtime import dead_letter_replay as replays
    from streams.runtime.topics import DEAD_LETTER_REPLAYS, DEAD_LETTERS
    from streams.wire.dead_letters import build_dead_letter, encode_dead_letter

    bootstrap = settings.kafka_bootstrap_servers or ""
    asyncio.run(ensure_topics(bootstrap, settings))
    source = settings.topic("interaction-events")
    dead = [build_dead_letter(source, 0, offset, b"acct", b"bytes-%d" % offset, [], "UNKNOWN_SCHEMA",
                              "no schema", 1_000 + offset) for offset in range(25)]
    send_raw(settings, DEAD_LETTERS,
             [(dl["dead_letter_id"].encode(), encode_dead_letter(dl), [], None) for dl in dead])
    dead_topic, ledger = settings.topic(DEAD_LETTERS), settings.topic(DEAD_LETTER_REPLAYS)
    txn_id, wanted = f"{settings.app_id}-dead-letter-replay", replays.DeadLetterFilter()
    asyncio.run(replays.ensure_ledger(bootstrap, ledger, 1, settings.replication_factor))

    async def both() -> tuple[BaseException | tuple[int, list[str]], tuple[int, list[str]]]:
        read, go_on = asyncio.Event(), asyncio.Event()
        original = replays.read_replayed

        async def slow_read(*args: object) -> dict[str, dict[str, object]]:
            markers = await original(*args)  # type: ignore[arg-type]
            if not read.is_set():  # the first run: paused with what it read
                read.set()
                await go_on.wait()
            return markers

        monkeypatch.setattr(replays, "read_replayed", slow_read)
        first = asyncio.ensure_future(replays.replay(bootstrap, dead_topic, ledger, txn_id, wanted, 1))
        await read.wait()
        second = await replays.replay(bootstrap, dead_topic, ledger, txn_id, wanted, 2)
        go_on.set()
        try:
            return await first, second
        except replays.ReplayFenced as exc:
            return exc, second

    first, second = asyncio.run(both())
    assert second == (0, [dl["dead_letter_id"] for dl in dead])
    # The paused run was fenced by the other's start: it fails whole, with the error the CLI prints.
    assert isinstance(first, replays.ReplayFenced), first
    resubmitted = [r for r in read_topic(settings, source) if any(k == REPLAY_OF_HEADER for k, _ in r.headers)]
    assert len(resubmitted) == len(dead), "each dead letter re-submitted once"
