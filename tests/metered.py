"""Metered (usage-enriched) records for tests that start downstream of the processor."""

from __future__ import annotations

from typing import Any

from streams.credits.meter import Meter, RawRecord
from streams.credits.policy import load_policy
from streams.synthetic.generator import Generator
from streams.wire.codec import Decoder, encode_single_object

NOW_MS = 1_793_100_000_000


def metered(n: int, *, accounts: int, seed: int, prefix: str, partitions: int = 1) -> list[dict[str, Any]]:
    """``n`` generated events metered with their accounts' grants, so records carry debits and the
    ledger has rows too; event i comes from input partition ``i % partitions``."""
    gen = Generator(accounts=accounts, seed=seed, account_prefix=prefix)
    meter = Meter(load_policy(), Decoder("InteractionEvent"), Decoder("CreditGrant"))
    granted = meter.grants([RawRecord("g", 0, i, None, encode_single_object(g, "CreditGrant"))
                            for i, g in enumerate(gen.grants())], lambda _a: None, NOW_MS)
    grants = {account: state for account, (_p, state) in granted.grant_updates.items()}
    raws = [RawRecord("in", i % partitions, i // partitions, None, encode_single_object(ev, "InteractionEvent"))
            for i, ev in enumerate(gen.events(n))]
    return meter.meter(raws, lambda _a: None, grants.get, NOW_MS).enriched
