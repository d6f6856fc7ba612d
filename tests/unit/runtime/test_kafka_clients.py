"""Kafka client configuration from settings: security arguments, errors in one line, no secrets shown."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import faust
import pytest
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed

from streams.runtime.kafka_clients import (
    KafkaClients,
    KafkaConfigError,
    clients_for,
    describe_failure,
    faust_broker_settings,
    security_kwargs,
)
from streams.settings import Settings

SECRET = "s3cret-Passw0rd"


def _sasl(**kw: object) -> Settings:
    base: dict[str, object] = {"KAFKA_BOOTSTRAP_SERVERS": "broker-1:9093", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                               "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "svc",
                               "KAFKA_SASL_PASSWORD": SECRET}
    return Settings(**{**base, **kw})  # type: ignore[arg-type]


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    assert security_kwargs(Settings()) == {"security_protocol": "PLAINTEXT"}


def test_settings_come_from_the_names_kafka_users_export(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
                        "KAFKA_SASL_USERNAME": "svc", "KAFKA_SASL_PASSWORD": SECRET,
                        "KAFKA_SSL_CAFILE": str(tmp_path / "ca.pem"), "KAFKA_SSL_CHECK_HOSTNAME": "false",
                        "KAFKA_DELIVERY_TIMEOUT_MS": "5000", "CREDITFLOW_GROUP_INSTANCE_ID": "pod-0"}.items():
        monkeypatch.setenv(name, value)
    s = Settings()
    assert (s.kafka_security_protocol, s.kafka_sasl_mechanism, s.kafka_sasl_username) == ("SASL_SSL", "SCRAM-SHA-256",
                                                                                         "svc")
    assert s.kafka_ssl_cafile == tmp_path / "ca.pem" and s.kafka_ssl_check_hostname is False
    assert s.kafka_delivery_timeout_ms == 5000 and s.group_instance_id == "pod-0"
    # The password is a secret: not in the settings' repr, nor in the clients'.
    assert SECRET not in repr(s) and SECRET not in str(s)


def test_sasl_ssl_arguments_verify_the_broker() -> None:
    kw = security_kwargs(_sasl())
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "svc" and kw["sasl_plain_password"] == SECRET
    context = kw["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is True


def test_hostname_verification_off_still_verifies_the_chain() -> None:
    context = security_kwargs(_sasl(KAFKA_SSL_CHECK_HOSTNAME=False))["ssl_context"]
    assert context.check_hostname is False and context.verify_mode == ssl.CERT_REQUIRED


def test_sasl_plaintext_has_no_tls() -> None:
    kw = security_kwargs(_sasl(KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", KAFKA_SASL_MECHANISM="PLAIN"))
    assert "ssl_context" not in kw and kw["sasl_mechanism"] == "PLAIN"


@pytest.mark.parametrize(("overrides", "named"), [
    ({"KAFKA_SASL_USERNAME": None}, "KAFKA_SASL_USERNAME"),
    ({"KAFKA_SASL_PASSWORD": None}, "KAFKA_SASL_PASSWORD"),
    ({"KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "KAFKA_SSL_CAFILE /nonexistent/ca.pem cannot be read"),
    ({"KAFKA_SSL_KEYFILE": "/tmp/k.pem"}, "KAFKA_SSL_KEYFILE is set without KAFKA_SSL_CERTFILE"),
])
def test_unusable_settings_are_one_line_naming_the_variable(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(KafkaConfigError) as failure:
        KafkaClients(_sasl(**overrides))
    message = str(failure.value)
    assert named in message and "\n" not in message and SECRET not in message


def test_a_file_that_is_not_a_certificate_is_named(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(KafkaConfigError, match=r"KAFKA_SSL_CAFILE .* is not a PEM CA certificate"):
        security_kwargs(_sasl(KAFKA_SSL_CAFILE=junk))
    with pytest.raises(KafkaConfigError, match="KAFKA_SSL_CERTFILE/KAFKA_SSL_KEYFILE"):
        security_kwargs(_sasl(KAFKA_SSL_CERTFILE=junk, KAFKA_SSL_KEYFILE=junk))


def test_clients_print_as_their_address_only() -> None:
    clients = KafkaClients(_sasl())
    assert str(clients) == "broker-1:9093" and SECRET not in repr(clients)
    assert clients.common()["bootstrap_servers"] == "broker-1:9093"


def test_a_bare_address_takes_the_given_settings_security() -> None:
    assert clients_for("h:1").common() == {"bootstrap_servers": "h:1", "security_protocol": "PLAINTEXT"}
    secured = clients_for("h:2", _sasl())
    assert secured.common()["security_protocol"] == "SASL_SSL" and secured.bootstrap == "h:2"
    assert clients_for(secured) is secured


def test_group_membership_static_only_when_named() -> None:
    dynamic = KafkaClients(Settings(KAFKA_BOOTSTRAP_SERVERS="h:1")).group_member("processor")
    assert dynamic == {"session_timeout_ms": 10_000, "heartbeat_interval_ms": 1_000}
    static = KafkaClients(Settings(KAFKA_BOOTSTRAP_SERVERS="h:1", group_instance_id="pod-3",
                                   KAFKA_SESSION_TIMEOUT_MS=6_000)).group_member("sink")
    assert static == {"session_timeout_ms": 6_000, "heartbeat_interval_ms": 1_000, "group_instance_id": "pod-3-sink"}
    # The explicit opt-outs keep dynamic membership.
    for off in ("", "none", "NONE"):
        member = KafkaClients(Settings(KAFKA_BOOTSTRAP_SERVERS="h:1", group_instance_id=off)).group_member("sink")
        assert "group_instance_id" not in member


def test_faust_gets_the_same_credentials() -> None:
    conf = faust_broker_settings(_sasl(group_instance_id="pod-1", web_port=6066), "broker-1:9093")
    creds = conf["broker_credentials"]
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == "SCRAM-SHA-512"
    assert creds.username == "svc" and SECRET not in repr(creds)
    # Faust rejects a kept assignment naming another URL: its member id names the web port.
    assert conf["broker"] == "kafka://broker-1:9093" and conf["consumer_group_instance_id"] == "pod-1-faust-6066"
    # No port pinned yet (membership.settle pins it): dynamic there.
    assert faust_broker_settings(_sasl(group_instance_id="pod-1"), "b:1")["consumer_group_instance_id"] is None
    assert faust_broker_settings(_sasl(group_instance_id="", web_port=1), "b:1")["consumer_group_instance_id"] is None
    ssl_only = faust_broker_settings(Settings(KAFKA_SECURITY_PROTOCOL="SSL"), "b:1")["broker_credentials"]
    assert isinstance(ssl_only, faust.SSLCredentials)
    plain = faust_broker_settings(Settings(), "b:1")
    assert plain["broker_credentials"] is None and plain["consumer_group_instance_id"] is None


def test_failures_are_described_in_one_line_without_secrets() -> None:
    clients = KafkaClients(_sasl())
    rejected = asyncio.run(describe_failure(SaslAuthenticationFailed("Authentication failed"), clients))
    assert rejected == ("Kafka at broker-1:9093 rejected the SASL credentials of user 'svc' "
                        "(check KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD, KAFKA_SASL_MECHANISM)")
    assert asyncio.run(describe_failure(KafkaConfigError("KAFKA_X is wrong"), clients)) == "KAFKA_X is wrong"
    # "Unable to bootstrap" says nothing: the broker is dialled again to name the cause.
    unreachable = KafkaClients(Settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1"))
    line = asyncio.run(describe_failure(KafkaConnectionError("Unable to bootstrap from [...]"), unreachable))
    assert line.startswith("cannot reach Kafka at 127.0.0.1:1") and "\n" not in line
    bad = asyncio.run(describe_failure(KafkaConnectionError("x"), "kafka.example"))
    assert "'kafka.example' is not host:port" in bad


def test_other_failures_keep_their_own_first_line() -> None:
    clients = KafkaClients(Settings(KAFKA_BOOTSTRAP_SERVERS="h:1"))
    clickhouse = ConnectionError("cannot reach ClickHouse at http://ch:8123\nretries: 3")
    assert asyncio.run(describe_failure(clickhouse, clients)) == "cannot reach ClickHouse at http://ch:8123"
    assert asyncio.run(describe_failure(TimeoutError(), clients, from_kafka=True)) == (
        "cannot reach Kafka at h:1: TimeoutError")


def test_a_broker_hanging_up_names_the_likely_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A TLS listener that requires a client certificate, or a listener spoken to in the wrong
    protocol, closes the connection right after it opens: the line says what to check."""
    closed = KafkaConnectionError("Connection at broker-1:9093 closed")

    async def hangs_up(*args: object, **kwargs: object) -> None:
        raise closed

    monkeypatch.setattr("streams.runtime.kafka_clients.create_conn", hangs_up)
    no_cert = asyncio.run(describe_failure(closed, KafkaClients(_sasl()), from_kafka=True))
    assert no_cert.startswith("cannot reach Kafka at broker-1:9093") and "KAFKA_SSL_CERTFILE" in no_cert, no_cert
    plain = KafkaClients(Settings(KAFKA_BOOTSTRAP_SERVERS="broker-1:9093"))
    wrong_protocol = asyncio.run(describe_failure(closed, plain, from_kafka=True))
    assert "KAFKA_SECURITY_PROTOCOL" in wrong_protocol and "KAFKA_SSL_CERTFILE" not in wrong_protocol, wrong_protocol
