"""``creditflow balance ACCOUNT``: an account's credit balance, as the platform's request path sees it.

It asks a running processor on this machine (``running_workers``; any of them: a worker that does
not own the account forwards to the one that does) and, when none answers, reads the account's
partition of the compacted credit-balances topic instead (``BalanceView``), saying so. That read uses
the configured Kafka, or the local broker under the data dir when it is running; it never starts one
(a broker started for one read would outlive the command). Every failure is one line and exit 1.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import aiohttp
import click
from aiokafka.errors import KafkaError

from schemas.contracts import CreditBalance
from schemas.policy_file import MICRO
from streams.balance_lookup import balance_url
from streams.balance_view import BalanceView
from streams.runtime.kafka_clients import clients_for, describe_failure
from streams.runtime.web import running_workers
from streams.settings import Settings, get_settings

_HTTP_TIMEOUT = 15.0
_TOPIC_TIMEOUT = 30.0


def credits(micro: int) -> str:
    return f"{Decimal(micro) / MICRO:.6f}"


def render(balance: CreditBalance, source: str) -> str:
    """The human-readable answer (pure)."""
    lines = [f"account {balance['account_id']}: {credits(balance['total_remaining_micro'])} credits left "
             f"(balance #{balance['balance_seq']}, policy {balance['policy_version']}, from {source})",
             f"  grant-funded {credits(balance['grant_funded_micro'])}, "
             f"subscription-funded {credits(balance['subscription_funded_micro'])}"]
    for g in balance["grants"]:
        lines.append(f"  {g['grant_id']} ({g['campaign']}): {credits(g['remaining_micro'])} of "
                     f"{credits(g['amount_micro'])} left, {g['status']}")
    return "\n".join(lines)


async def _from_workers(settings: Settings, account: str) -> tuple[int, dict[str, Any]] | None:
    workers = [w for w in running_workers(settings.data_dir)
               if w.app_id == settings.app_id and w.role in ("all", "processor")]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_HTTP_TIMEOUT)) as session:
        for w in workers:
            try:
                async with session.get(balance_url(w.url, account)) as resp:
                    if resp.status in (200, 404):
                        return resp.status, await resp.json()
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
    return None


def _bootstrap(settings: Settings) -> str:
    if settings.kafka_bootstrap_servers:
        return settings.kafka_bootstrap_servers
    from deploy.kafka.launcher import LocalKafka

    status = LocalKafka(settings.data_dir).status()
    if status is None or not status.alive:
        raise LookupError(f"no local broker is running under {settings.data_dir} and KAFKA_BOOTSTRAP_SERVERS "
                          "is not set")
    return status.bootstrap


async def _from_topic(settings: Settings, bootstrap: str, account: str) -> CreditBalance | None:
    async with BalanceView(settings, bootstrap_servers=bootstrap, accounts=[account]) as view:
        await view.wait_caught_up(_TOPIC_TIMEOUT)
        return view.get(account)


@click.command("balance")
@click.argument("account")
@click.option("--json", "as_json", is_flag=True, help="print the CreditBalance record as JSON")
def balance(account: str, as_json: bool) -> None:
    """Show ACCOUNT's credit balance: from a running worker, else from the credit-balances topic."""
    settings = get_settings()
    answer = asyncio.run(_from_workers(settings, account))
    if answer is not None:
        status, body = answer
        if status == 404:
            raise click.ClickException(f"no balance for account {account!r} (no grant or event seen yet)")
        record: CreditBalance = body["balance"]
        source = f"worker {body.get('served_by', '?')}"
    else:
        try:
            bootstrap = _bootstrap(settings)
            found = asyncio.run(_from_topic(settings, bootstrap, account))
        except (LookupError, TimeoutError, OSError, KafkaError) as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, KafkaError):  # why: wrong credentials, TLS, unreachable (as everywhere)
                reason = asyncio.run(describe_failure(exc, clients_for(bootstrap, settings), from_kafka=True))
            raise click.ClickException(f"no running worker answered and the credit-balances topic could not be "
                                       f"read: {reason}") from None
        if found is None:
            raise click.ClickException(f"no balance for account {account!r} on the credit-balances topic")
        record, source = found, "the credit-balances topic (no running worker answered)"
    click.echo(json.dumps(record, sort_keys=True) if as_json else render(record, source))
