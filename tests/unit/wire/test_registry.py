"""Registry schemas fetched asynchronously: found ids kept on disk, definitive not-found remembered,
an unreachable registry makes records wait (never dead-letters them), bogus floods stay bounded."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from schemas.catalogue import get_catalogue
from streams.synthetic.generator import Generator
from streams.wire.codec import DecodeError, Decoder, ErrorKind, SchemaRegistryClient, encode_confluent
from streams.wire.registry import (
    RegistrySchemas,
    SchemaCacheDir,
    SchemaPending,
    classify_answer,
    confluent_schema_id,
)
from tests.fake_registry import FakeRegistry


def _schemas(url: str, data_dir: Path | None, **kwargs: object) -> RegistrySchemas:
    opts: dict[str, object] = {"backoff_min": 0.05, "backoff_max": 0.2, "timeout": 2.0, **kwargs}
    return RegistrySchemas.for_client(SchemaRegistryClient(url), data_dir, **opts)  # type: ignore[arg-type]


def _event_bytes(schema_id: int) -> bytes:
    sv = get_catalogue().latest("InteractionEvent")
    return encode_confluent(next(iter(Generator(accounts=1, seed=1).events(1))), schema_id, sv.parsed)


def test_confluent_schema_id_reads_only_confluent_framing() -> None:
    assert confluent_schema_id(b"\x00\x00\x00\x01\x02rest") == 258
    assert confluent_schema_id(b"\x00\x00\x01") is None
    assert confluent_schema_id(b"\xc3\x01" + b"\x00" * 12) is None
    assert confluent_schema_id(None) is None


def test_only_a_definitive_404_is_not_found() -> None:
    assert classify_answer(200, {"schema": "{}"}) == ("found", "{}")
    assert classify_answer(404, {"error_code": 40403, "message": "Schema not found"})[0] == "not_found"
    assert classify_answer(404, None)[0] == "not_found"
    assert classify_answer(200, {"schema": "x", "schemaType": "PROTOBUF"})[0] == "not_found"
    for status, body in ((500, {"error_code": 50001}), (503, None), (429, None), (401, {"error_code": 40101}),
                         (404, {"error_code": 40401})):
        assert classify_answer(status, body)[0] == "unavailable", (status, body)


def test_found_ids_are_kept_on_disk_and_read_after_a_restart_without_the_registry(
        registry: FakeRegistry, tmp_path: Path) -> None:
    sid = registry.register(get_catalogue().latest("InteractionEvent").schema_json)

    async def first() -> None:
        schemas = _schemas(registry.url, tmp_path)
        try:
            assert await schemas.resolve({sid}, timeout=10) == set()
        finally:
            await schemas.close()
        decoded = Decoder("InteractionEvent", schemas).decode(_event_bytes(sid))
        assert decoded["event_id"]

    asyncio.run(first())
    assert json.loads((SchemaCacheDir(tmp_path, registry.url).path / f"{sid}.json").read_text())
    registry.down()
    restarted = _schemas(registry.url, tmp_path)
    assert restarted.undecided({sid}) == set()
    assert Decoder("InteractionEvent", restarted).decode(_event_bytes(sid))["event_id"]
    assert registry.gets == [sid]


def test_an_unreachable_registry_makes_records_wait_and_they_decode_once_it_is_back(
        registry: FakeRegistry, tmp_path: Path) -> None:
    sid = registry.register(get_catalogue().latest("InteractionEvent").schema_json)
    registry.down()

    async def run() -> None:
        schemas = _schemas(registry.url, tmp_path)
        try:
            t0 = time.monotonic()
            assert await schemas.resolve({sid}, timeout=0.3) == {sid}
            assert time.monotonic() - t0 < 2
            with pytest.raises(SchemaPending) as pending:
                Decoder("InteractionEvent", schemas).decode(_event_bytes(sid))
            assert pending.value.kind is ErrorKind.REGISTRY_UNAVAILABLE
            registry.up()
            # The background lookups retry by themselves (backoff), no new request needed.
            deadline = time.monotonic() + 20
            while schemas.undecided({sid}) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert schemas.undecided({sid}) == set()
            assert Decoder("InteractionEvent", schemas).decode(_event_bytes(sid))["event_id"]
        finally:
            await schemas.close()

    asyncio.run(run())


def test_bogus_ids_are_not_found_once_each_with_bounded_concurrency(registry: FakeRegistry) -> None:
    registry.delay = 0.01
    bogus = set(range(5_000, 5_200))

    async def run() -> None:
        schemas = _schemas(registry.url, None, concurrency=4)
        try:
            assert await schemas.resolve(bogus, timeout=30) == set()
            assert await schemas.resolve(bogus, timeout=30) == set()  # remembered: no second lookup
        finally:
            await schemas.close()
        with pytest.raises(DecodeError) as err:
            Decoder("InteractionEvent", schemas).decode(_event_bytes(5_000))
        assert err.value.kind is ErrorKind.UNKNOWN_SCHEMA and not isinstance(err.value, SchemaPending)

    asyncio.run(run())
    assert sorted(registry.gets) == sorted(bogus)
    assert registry.max_in_flight <= 4


def test_a_full_queue_refuses_ids_and_takes_them_when_asked_again(registry: FakeRegistry) -> None:
    async def run() -> None:
        schemas = _schemas(registry.url, None, max_pending=2, concurrency=1)
        try:
            assert len(await schemas.resolve({1, 2, 3, 4}, timeout=1)) == 2
            assert await schemas.resolve({1, 2, 3, 4}, timeout=5) == set()
        finally:
            await schemas.close()

    asyncio.run(run())


def test_the_memory_of_missing_ids_is_bounded(registry: FakeRegistry) -> None:
    async def run() -> None:
        schemas = _schemas(registry.url, None, max_not_found=50, concurrency=8)
        try:
            for start in range(1, 201, 50):
                assert await schemas.resolve(set(range(start, start + 50)), timeout=60) == set()
            assert len(schemas.not_found) == 50
            assert schemas.undecided(range(1, 201)) == set(range(1, 151))  # the oldest are forgotten
        finally:
            await schemas.close()

    asyncio.run(run())
