"""``creditflow balance``: the human-readable answer, exact credits."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploy.kafka.launcher import LocalKafka
from streams.cli.balance import balance, render
from streams.credits.account_state import AccountUsage
from streams.credits.balances import balance_record
from streams.settings import get_settings


def test_render_shows_exact_credits_per_grant_and_the_source() -> None:
    grants = {"g1": {"amount": 25_000_000, "campaign": "launch", "granted_at": 0, "expires_at": 10**13,
                     "priority": 0, "revoked_at": None}}
    usage = AccountUsage(input_partition=1, applied_offset=9, spent_by_grant={"g1": 1_234_567},
                         subscription_funded_micro=5, event_time_ms=1, balance_seq=3)
    rec = balance_record("acct-7", grants, usage, "2026.11-1", 1, 0)
    text = render(rec, "worker http://x")
    assert text.splitlines()[0] == ("account acct-7: 23.765433 credits left (balance #3, policy 2026.11-1, "
                                    "from worker http://x)")
    assert "subscription-funded 0.000005" in text and "g1 (launch): 23.765433 of 25.000000 left, ACTIVE" in text


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    # The command reads the environment through the cached settings object.
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_worker_and_no_broker_is_a_one_line_error(tmp_path: Path) -> None:
    env = {"CREDITFLOW_DATA_DIR": str(tmp_path), "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{_closed_port()}"}
    result = CliRunner().invoke(balance, ["acct-1"], env=env)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: no running worker answered") and "Kafka" in lines[0], lines


def test_no_worker_and_no_configured_kafka_starts_no_broker(tmp_path: Path) -> None:
    # A read must not launch a broker (which would outlive the command) just to find nothing.
    result = CliRunner().invoke(balance, ["acct-1"], env={"CREDITFLOW_DATA_DIR": str(tmp_path),
                                                          "KAFKA_BOOTSTRAP_SERVERS": ""})
    assert result.exit_code == 1, result.output
    assert len(result.output.strip().splitlines()) == 1 and "no local broker" in result.output, result.output
    assert LocalKafka(tmp_path).status() is None
