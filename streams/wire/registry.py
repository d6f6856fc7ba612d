"""Writer schemas of Confluent-framed records, fetched from the schema registry without blocking.

The decoder reads schemas from memory only (:meth:`RegistrySchemas.get_schema`): an id this process
has not fetched yet raises :class:`SchemaPending`, never waits. Fetching is asynchronous (aiohttp on
the worker's loop) and happens before a batch is decoded: :meth:`RegistrySchemas.resolve` starts
lookups of the ids a batch needs and waits a bounded time for them; the caller holds back the
records whose ids are still undecided (see ``streams/runtime/schema_gate.py``).

Each id ends in one of three states:
- found: kept in memory and written to disk under the data dir, so a restart with the registry down
  still reads every id it has read before (a registry id always names the same schema);
- not found: only a definitive answer (HTTP 404, error code 40403 or none) counts; remembered for
  ``not_found_ttl`` so a flood of bogus ids costs one lookup each, then asked again (ids are
  allocated as schemas are registered, so a missing id can appear later);
- undecided: the registry is unreachable or failing (connection errors, timeouts, 5xx, 429, any
  other status). Lookups back off exponentially for the whole registry, since one id failing that
  way means they all would.

At most ``concurrency`` lookups run at once, at most ``max_pending`` ids wait for one and at most
``max_not_found`` missing ids are remembered, so bogus ids cannot crowd out memory or the registry;
ids refused for room are asked for again by the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp

from streams.wire.codec import (
    CONFLUENT_HEADER_LEN,
    CONFLUENT_MAGIC,
    DecodeError,
    ErrorKind,
    RegistryUnavailable,
    SchemaRegistryClient,
)

log = logging.getLogger("creditflow.registry")

# The Confluent registry's error code for "schema not found" on GET /schemas/ids/{id}.
SCHEMA_NOT_FOUND = 40403


class SchemaPending(RegistryUnavailable):
    """The id has not been fetched yet; the record must wait, not be dead-lettered."""


def confluent_schema_id(value: bytes | None) -> int | None:
    """The schema id of a Confluent-framed value, None for anything else (single-object, junk, short)."""
    if value is None or len(value) < CONFLUENT_HEADER_LEN or value[0] != CONFLUENT_MAGIC:
        return None
    return int.from_bytes(value[1:CONFLUENT_HEADER_LEN], "big")


class SchemaCacheDir:
    """Fetched schemas on disk, one file per id, in a directory per registry URL (ids are per registry)."""

    def __init__(self, data_dir: Path, base_url: str) -> None:
        digest = hashlib.sha256(base_url.encode()).hexdigest()[:16]
        self.path = data_dir / "schema-registry" / digest

    def load(self) -> dict[int, str]:
        out: dict[int, str] = {}
        if not self.path.is_dir():
            return out
        for entry in self.path.glob("*.json"):
            try:
                out[int(entry.stem)] = entry.read_text()
            except (ValueError, OSError) as exc:
                log.warning("ignoring unreadable cached schema %s: %r", entry, exc)
        return out

    def save(self, schema_id: int, text: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        final = self.path / f"{schema_id}.json"
        tmp = self.path / f".{schema_id}.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, final)  # a crash never leaves half a schema under the final name


def classify_answer(status: int, body: Any) -> tuple[str, str]:
    """("found", schema) | ("not_found", why) | ("unavailable", why) for one registry answer."""
    if status == 200:
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            return "not_found", "registry answer has no schema"
        kind = body.get("schemaType", "AVRO")
        if kind != "AVRO":
            return "not_found", f"schema is {kind}, not AVRO"
        return "found", body["schema"]
    code = body.get("error_code") if isinstance(body, dict) else None
    message = body.get("message", "") if isinstance(body, dict) else ""
    if status == 404 and code in (None, SCHEMA_NOT_FOUND):
        return "not_found", f"HTTP 404 {code or ''} {message}".strip()
    return "unavailable", f"HTTP {status} {code or ''} {message}".strip()


class RegistrySchemas:
    """Registry schemas by id for the decoder, fetched asynchronously and cached in memory and on disk."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str] | None = None,
        *,
        cache: SchemaCacheDir | None = None,
        concurrency: int = 4,
        timeout: float = 5.0,
        not_found_ttl: float = 300.0,
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
        max_pending: int = 10_000,
        max_not_found: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers or {})
        self.cache = cache
        self.concurrency = concurrency
        self.timeout = timeout
        self.not_found_ttl = not_found_ttl
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.max_pending = max_pending
        self.max_not_found = max_not_found
        self._clock = clock
        self.known: dict[int, str] = cache.load() if cache is not None else {}
        self.not_found: dict[int, tuple[str, float]] = {}  # id -> (why, asked again after)
        self._pending: dict[int, None] = {}  # insertion-ordered set of ids waiting for a lookup
        self._retry_at = 0.0
        self._backoff = 0.0
        self._last_failure = ""
        self._pump: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._decided: asyncio.Condition | None = None
        self._session: aiohttp.ClientSession | None = None
        self.lookups = 0  # requests sent, for tests and metrics

    @classmethod
    def for_client(cls, client: SchemaRegistryClient, data_dir: Path | None, **kwargs: Any) -> RegistrySchemas:
        """Lookups at ``client``'s registry with its credentials, cached under ``data_dir``."""
        cache = SchemaCacheDir(data_dir, client.base_url) if data_dir is not None else None
        return cls(client.base_url, client.headers, cache=cache, **kwargs)

    # -- what the decoder calls (synchronous, memory only) ------------------------------------------

    def get_schema(self, schema_id: int) -> str:
        text = self.known.get(schema_id)
        if text is not None:
            return text
        missing = self.not_found.get(schema_id)
        if missing is not None:
            raise DecodeError(ErrorKind.UNKNOWN_SCHEMA, f"registry has no schema id {schema_id} ({missing[0]})")
        raise SchemaPending(f"schema id {schema_id} is not fetched yet"
                            + (f"; registry: {self._last_failure}" if self._last_failure else ""))

    # -- what the intake calls ----------------------------------------------------------------------

    def undecided(self, ids: Iterable[int]) -> set[int]:
        """Ids that are neither known nor known missing (an expired not-found counts as undecided)."""
        now = self._clock()
        out = set()
        for i in ids:
            if i in self.known:
                continue
            missing = self.not_found.get(i)
            if missing is not None and missing[1] > now:
                continue
            out.add(i)
        return out

    def request(self, ids: Iterable[int]) -> None:
        """Queue lookups for ``ids`` (those with room); the lookups run in the background."""
        added = False
        for i in self.undecided(ids):
            if i not in self._pending and len(self._pending) < self.max_pending:
                self._pending[i] = None
                added = True
        if added:
            self._ensure_pump()
            assert self._wake is not None
            self._wake.set()

    async def resolve(self, ids: Iterable[int], timeout: float) -> set[int]:
        """Request ``ids`` and wait up to ``timeout`` s until they are decided; the ids still undecided."""
        wanted = self.undecided(ids)
        if not wanted:
            return wanted
        self._ensure_pump()
        self.request(wanted)
        if self._retry_at > self._clock():
            return wanted  # backing off from an unreachable registry: waiting would only stall the batch
        assert self._decided is not None
        try:
            async with self._decided:
                await asyncio.wait_for(self._decided.wait_for(lambda: not self.undecided(wanted)), timeout)
        except TimeoutError:
            pass
        return self.undecided(wanted)

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump
            self._pump = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the background lookups ---------------------------------------------------------------------

    def _ensure_pump(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
            self._decided = asyncio.Condition()
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._run(), name="registry-lookups")

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = self._retry_at - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            ids = list(self._pending)[: self.concurrency]
            results = await asyncio.gather(*(self._lookup(i) for i in ids), return_exceptions=True)
            failed = False
            for i, result in zip(ids, results, strict=True):
                if isinstance(result, BaseException):
                    outcome, detail = "unavailable", f"{type(result).__name__}: {result}"
                else:
                    outcome, detail = result
                if outcome == "found":
                    self._found(i, detail)
                elif outcome == "not_found":
                    self._pending.pop(i, None)
                    self._remember_missing(i, detail)
                else:
                    failed = True
                    self._last_failure = detail
            if failed:
                self._backoff = min(self.backoff_max, max(self.backoff_min, self._backoff * 2))
                self._retry_at = self._clock() + self._backoff
                log.warning("schema registry %s unavailable (%s); records needing ids %s wait, next try in %.1f s",
                            self.base_url, self._last_failure, sorted(self._pending)[:10], self._backoff)
            else:
                self._backoff = 0.0
                self._last_failure = ""
            await self._notify()

    def _remember_missing(self, schema_id: int, why: str) -> None:
        missing = self.not_found
        missing.pop(schema_id, None)
        if len(missing) >= self.max_not_found:
            # Oldest first (insertion order): one forgotten is only looked up again if seen again.
            for old in list(missing)[: len(missing) - self.max_not_found + 1]:
                del missing[old]
        missing[schema_id] = (why, self._clock() + self.not_found_ttl)

    def _found(self, schema_id: int, text: str) -> None:
        self._pending.pop(schema_id, None)
        self.not_found.pop(schema_id, None)
        self.known[schema_id] = text
        if self.cache is not None:
            try:
                self.cache.save(schema_id, text)
            except OSError as exc:  # memory still has it; only a restart would ask again
                log.warning("cannot cache schema id %d on disk: %r", schema_id, exc)

    async def _notify(self) -> None:
        assert self._decided is not None
        async with self._decided:
            self._decided.notify_all()

    async def _lookup(self, schema_id: int) -> tuple[str, str]:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self.headers)
        self.lookups += 1
        try:
            async with self._session.get(f"{self.base_url}/schemas/ids/{schema_id}",
                                         timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                raw = await resp.read()
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                    if resp.status == 200:
                        return "unavailable", "HTTP 200 with a body that is not JSON"
                return classify_answer(resp.status, body)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return "unavailable", f"{type(exc).__name__}: {exc}"
