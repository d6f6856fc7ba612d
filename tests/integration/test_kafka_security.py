"""Every client over SASL_SSL against the local broker with a SASL_SSL listener (PLAIN and SCRAM
users, a throwaway CA, mutual TLS): the producer API, topic administration, a whole worker; and a
broken configuration (wrong password, unreadable or wrong CA, unreachable broker) said in one line."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from deploy.kafka.launcher import LocalKafka, SaslSslListener, free_port
from sinks.client import close, connect
from streams.producer import CreditflowProducer, DeliveryError
from streams.runtime.dead_letter_replay import read_all
from streams.runtime.kafka_clients import KafkaClients, describe_failure
from streams.runtime.topics import ensure_topics
from streams.settings import Settings
from streams.synthetic.generator import Generator
from streams.wire.dead_letters import build_dead_letter, encode_dead_letter
from tests.integration.harness import REPO, Worker, wait_drained
from tests.integration.tls_material import TlsMaterial, make_tls_material

pytestmark = pytest.mark.integration

PLAIN_USER, PLAIN_PASSWORD = "alice", "alice-Pl41n-secret"
SCRAM_USER, SCRAM_PASSWORD = "bob", "bob-Scr4m-secret"
WRONG_PASSWORD = "not-the-Passw0rd"


class SecuredBroker:
    def __init__(self, kafka: LocalKafka, tls: TlsMaterial, plaintext: str, secured: str) -> None:
        self.kafka, self.tls, self.plaintext, self.secured = kafka, tls, plaintext, secured

    def env(self, mechanism: str = "SCRAM-SHA-512", user: str = SCRAM_USER, password: str = SCRAM_PASSWORD,
            **extra: str) -> dict[str, str]:
        """The client settings as an operator would export them."""
        return {"KAFKA_BOOTSTRAP_SERVERS": self.secured, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": mechanism, "KAFKA_SASL_USERNAME": user, "KAFKA_SASL_PASSWORD": password,
                "KAFKA_SSL_CAFILE": str(self.tls.ca_pem), "KAFKA_SSL_CERTFILE": str(self.tls.client_cert),
                "KAFKA_SSL_KEYFILE": str(self.tls.client_key), **extra}

    def settings(self, base: Settings | None = None, **env: str) -> Settings:
        fields = {name: value for name, value in (base.model_dump() if base else {}).items()
                  if not name.startswith("kafka_")}
        return Settings(**fields, **self.env(**env))


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    root = tmp_path_factory.mktemp("kafka-sasl-ssl")
    tls = make_tls_material(root / "tls")
    listener = SaslSslListener(tls.broker_keystore, tls.keystore_password, client_ca=tls.ca_pem,
                               plain_users={PLAIN_USER: PLAIN_PASSWORD}, scram_users={SCRAM_USER: SCRAM_PASSWORD})
    kafka = LocalKafka(root / "broker", sasl_ssl=listener)
    try:
        plaintext = kafka.start(timeout=120)
        assert kafka.sasl_ssl_bootstrap is not None
        yield SecuredBroker(kafka, tls, plaintext, kafka.sasl_ssl_bootstrap)
    finally:
        kafka.stop()


async def _count(clients: KafkaClients, topic: str) -> int:
    consumer = clients.consumer(group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = await consumer.end_offsets(tps)
        return sum(ends.values())
    finally:
        await consumer.stop()


@pytest.mark.parametrize(("mechanism", "user", "password"), [
    ("PLAIN", PLAIN_USER, PLAIN_PASSWORD),
    ("SCRAM-SHA-256", SCRAM_USER, SCRAM_PASSWORD),
    ("SCRAM-SHA-512", SCRAM_USER, SCRAM_PASSWORD),
])
def test_producer_api_and_admin_over_sasl_ssl(secured: SecuredBroker, topic_settings: Settings,
                                              mechanism: str, user: str, password: str) -> None:
    settings = secured.settings(topic_settings, mechanism=mechanism, user=user, password=password)
    events = list(Generator(accounts=5, seed=2, account_prefix="sec").events(25))

    async def run() -> int:
        await ensure_topics(secured.secured, settings)  # topic administration over SASL_SSL
        async with CreditflowProducer(settings) as producer:
            for ev in events:
                await producer.emit_interaction(ev)
            await producer.flush()
        return await _count(KafkaClients(settings), settings.topic("interaction-events"))

    assert asyncio.run(run()) == len(events)


def test_hostname_verification_can_be_switched_off(secured: SecuredBroker, topic_settings: Settings) -> None:
    # The broker certificate names "localhost" only; dialled by IP address it does not match.
    by_ip = secured.secured.replace("localhost", "127.0.0.1")
    checked = secured.settings(topic_settings).model_copy(update={"kafka_bootstrap_servers": by_ip})
    unchecked = checked.model_copy(update={"kafka_ssl_check_hostname": False})

    async def list_topics(settings: Settings) -> str:
        clients = KafkaClients(settings)
        admin = clients.admin()
        try:
            await admin.start()
            await admin.list_topics()
            return "ok"
        except Exception as exc:
            return await describe_failure(exc, clients)
        finally:
            await admin.close()

    failure = asyncio.run(list_topics(checked))
    assert "TLS" in failure and "127.0.0.1" in failure and "mismatch" in failure, failure
    assert asyncio.run(list_topics(unchecked)) == "ok"


def test_wrong_password_fails_the_producer_api_with_a_clear_error(secured: SecuredBroker,
                                                                   topic_settings: Settings) -> None:
    settings = secured.settings(topic_settings, password=WRONG_PASSWORD)
    with pytest.raises(DeliveryError) as failure:
        asyncio.run(CreditflowProducer(settings).start())
    message = str(failure.value)
    assert f"rejected the SASL credentials of user '{SCRAM_USER}'" in message, message
    assert WRONG_PASSWORD not in message and "\n" not in message


def test_worker_over_sasl_ssl_lands_every_event(secured: SecuredBroker, topic_settings: Settings,
                                                tmp_path: Path) -> None:
    base = topic_settings.model_copy(update={"clickhouse_url": f"chdb://{tmp_path / 'clickhouse'}",
                                             "kafka_bootstrap_servers": secured.plaintext})
    settings = secured.settings(base, mechanism="SCRAM-SHA-256")
    gen = Generator(accounts=40, seed=9, account_prefix="secw")
    grants, events = gen.grants(), list(gen.events(1_500))
    asyncio.run(ensure_topics(secured.secured, settings))
    # The worker is given the SASL_SSL address only: a client made without the settings' security
    # could not talk to it, so this covers every client it makes (processor, sink, changelogs, Faust).
    # At DEBUG: the clients' own debug lines must not carry the password or the key either.
    worker = Worker(base, "all", tmp_path, "secured", CREDITFLOW_LOG_LEVEL="DEBUG",
                    **secured.env(mechanism="SCRAM-SHA-256")).start()
    try:
        async def produce() -> None:
            async with CreditflowProducer(settings) as producer:
                for g in grants:
                    await producer.emit_grant(g)
                for ev in events:
                    await producer.emit_interaction(ev)
                await producer.flush()

        asyncio.run(produce())
        # Progress is read through the broker's plaintext listener, independently of the worker.
        wait_drained(base, [worker], timeout=240)
        assert worker.stop() == 0, worker.log_tail()
    finally:
        worker.stop(timeout=30)
    log = worker.log_path.read_text(errors="replace")
    assert SCRAM_PASSWORD not in log and "[DEBUG]" in log
    key_lines = [ln for ln in secured.tls.client_key.read_text().splitlines() if not ln.startswith("-----")]
    assert key_lines and not any(ln in log for ln in key_lines)
    assert f"kafka={secured.secured}" in log
    try:
        count, distinct = connect(base.resolved_clickhouse_url).query(
            "SELECT count(), uniqExact(event_id) FROM events").result_rows[0]
    finally:
        close(base.resolved_clickhouse_url)
    assert (count, distinct) == (len(events), len(events))


def _cli(args: list[str], env: dict[str, str], tmp_path: Path,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("CREDITFLOW_", "KAFKA_"))}
    full |= {"CREDITFLOW_DATA_DIR": str(tmp_path / "data"), "CREDITFLOW_TOPIC_PREFIX": "cli.",
             "CLICKHOUSE_URL": f"chdb://{tmp_path / 'clickhouse'}", **env}
    return subprocess.run([sys.executable, "-m", "streams.cli.main", *args], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_wrong_password_is_one_line_from_the_cli(secured: SecuredBroker, tmp_path: Path) -> None:
    env = secured.env(password=WRONG_PASSWORD)
    for args in (["worker"], ["produce", "--count", "1", "--no-grants"]):
        line = _one_line(_cli(args, env, tmp_path))
        assert line.startswith("error:") and f"rejected the SASL credentials of user '{SCRAM_USER}'" in line, line
        assert WRONG_PASSWORD not in line


@pytest.mark.parametrize("case", ["missing CA file", "untrusted CA", "unreachable broker", "not host:port",
                                  "password without user", "no client certificate"])
def test_broken_configuration_stops_the_worker_with_one_line(secured: SecuredBroker, tmp_path: Path,
                                                            case: str) -> None:
    env: dict[str, Any] = {
        "missing CA file": secured.env(KAFKA_SSL_CAFILE=str(tmp_path / "no-such-ca.pem")),
        "untrusted CA": secured.env(KAFKA_SSL_CAFILE=str(secured.tls.other_ca_pem)),
        "unreachable broker": {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"},
        "not host:port": {"KAFKA_BOOTSTRAP_SERVERS": "kafka.example"},
        "password without user": {**secured.env(), "KAFKA_SASL_USERNAME": ""},
        # The broker requires mutual TLS; "" is unset, as deployment templates write it.
        "no client certificate": secured.env(KAFKA_SSL_CERTFILE="", KAFKA_SSL_KEYFILE=""),
    }[case]
    line = _one_line(_cli(["worker"], env, tmp_path, timeout=180))
    expected = {
        "missing CA file": "KAFKA_SSL_CAFILE",
        "untrusted CA": "certificate verify failed",
        "unreachable broker": "cannot reach Kafka",
        "not host:port": "kafka.example",
        "password without user": "KAFKA_SASL_USERNAME",
        "no client certificate": "set KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE",
    }[case]
    assert line.startswith("error:") and expected in line, line
    assert SCRAM_PASSWORD not in line


def test_every_kafka_command_speaks_sasl_ssl_and_fails_in_one_line(secured: SecuredBroker, tmp_path: Path) -> None:
    """The commands that read or write topics (dead letters, alerts, balances) over SASL_SSL with
    mutual TLS, given only the exported settings; with a wrong password each says so in one line."""
    prefix = "cmds."
    settings = secured.settings(Settings(topic_prefix=prefix))
    dead = build_dead_letter(settings.topic("interaction-events"), 0, 7, b"acct-1", b"not avro", [],
                             "BAD_MAGIC", "bad magic byte", 1_700_000_000_000)

    async def setup() -> None:
        await ensure_topics(secured.secured, settings)
        producer = KafkaClients(settings).producer()
        await producer.start()
        try:
            await producer.send_and_wait(settings.topic("dead-letters"), encode_dead_letter(dead),
                                         key=dead["dead_letter_id"].encode())
        finally:
            await producer.stop()

    asyncio.run(setup())
    env = secured.env(CREDITFLOW_TOPIC_PREFIX=prefix)
    listed = _cli(["dead-letters", "list", "--json"], env, tmp_path)
    assert listed.returncode == 0 and json.loads(listed.stdout)["dead_letter_id"] == dead["dead_letter_id"], listed
    replayed = _cli(["dead-letters", "replay"], env, tmp_path)
    assert replayed.returncode == 0 and "replayed 1 dead letter" in replayed.stdout, replayed
    resubmitted = asyncio.run(read_all(KafkaClients(settings), settings.topic("interaction-events"),
                                       lambda rec: rec.value))
    assert resubmitted == [b"not avro"]
    tail = _cli(["alerts", "tail", "--from-beginning", "--no-follow"], env, tmp_path)
    assert tail.returncode == 0 and "Traceback" not in tail.stderr, tail
    balance = _cli(["balance", "acct-1"], env, tmp_path)  # read from the (empty) credit-balances topic
    assert "no balance for account 'acct-1' on the credit-balances topic" in _one_line(balance)

    wrong = {**env, "KAFKA_SASL_PASSWORD": WRONG_PASSWORD}
    for args in (["dead-letters", "list"], ["dead-letters", "replay"], ["alerts", "tail", "--no-follow"],
                 ["balance", "acct-1"]):
        line = _one_line(_cli(args, wrong, tmp_path))
        assert line.startswith("error:") and f"rejected the SASL credentials of user '{SCRAM_USER}'" in line, \
            (args, line)
        assert WRONG_PASSWORD not in line
