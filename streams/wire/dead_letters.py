"""DeadLetter records: an unusable input kept byte-for-byte with where it came from and why."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from streams.wire.codec import ErrorKind, encode_single_object
from streams.wire.models import DeadLetter, DeadLetterErrorKind, DeadLetterHeader

# Error messages can embed attacker-sized input (e.g. a bogus field value); bound what we store.
MAX_MESSAGE_LEN = 2_000


def dead_letter_id(source_topic: str, partition: int, offset: int) -> str:
    # Deterministic so a replayed batch produces the same id and the sink deduplicates it.
    return f"{source_topic}:{partition}:{offset}"


def build_dead_letter(
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes | None]] | None,
    kind: ErrorKind | str,
    message: str,
    now_ms: int,
) -> DeadLetter:
    kind = ErrorKind(kind)  # rejects a kind the DeadLetter enum does not have, loudly and early
    hdrs: list[DeadLetterHeader] = [
        {"key": str(k), "value": None if v is None else bytes(v)} for k, v in (headers or ())
    ]
    if len(message) > MAX_MESSAGE_LEN:
        message = message[: MAX_MESSAGE_LEN - 1] + "…"
    return {
        "dead_letter_id": dead_letter_id(source_topic, partition, offset),
        "source_topic": source_topic,
        "source_partition": partition,
        "source_offset": offset,
        "key": None if key is None else bytes(key),
        "original": b"" if value is None else bytes(value),
        "headers": hdrs,
        "error_kind": cast(DeadLetterErrorKind, kind.value),
        "message": message,
        "failed_at": now_ms,
    }


def encode_dead_letter(dl: DeadLetter) -> bytes:
    return encode_single_object(dl, "DeadLetter")
