"""The local broker's SASL_SSL listener config and its ports kept across restarts."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from deploy.kafka.launcher import LocalKafka, SaslSslListener, port_is_free, render_server_properties


def _parse(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def _listener(tmp_path: Path, client_ca: Path | None = None) -> SaslSslListener:
    return SaslSslListener(tmp_path / "broker.p12", "ks-pass", client_ca=client_ca,
                           plain_users={"alice": "a-pw"}, scram_users={"bob": "b-pw"})


def test_sasl_ssl_listener_is_added_next_to_plaintext(tmp_path: Path) -> None:
    props = _parse(render_server_properties(41001, 41002, tmp_path, _listener(tmp_path, tmp_path / "ca.pem"), 41003))
    assert props["listeners"] == ("PLAINTEXT://127.0.0.1:41001,CONTROLLER://127.0.0.1:41002,"
                                  "SASL_SSL://127.0.0.1:41003")
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:41001,SASL_SSL://localhost:41003"
    assert props["listener.security.protocol.map"].endswith(",SASL_SSL:SASL_SSL")
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    p = "listener.name.sasl_ssl."
    assert props[p + "sasl.enabled.mechanisms"] == "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"
    assert 'user_alice="a-pw"' in props[p + "plain.sasl.jaas.config"]
    assert props[p + "ssl.keystore.location"] == str(tmp_path / "broker.p12")
    assert props[p + "ssl.client.auth"] == "required" and props[p + "ssl.truststore.type"] == "PEM"


def test_without_a_client_ca_no_client_certificate_is_asked_for(tmp_path: Path) -> None:
    props = _parse(render_server_properties(1, 2, tmp_path, _listener(tmp_path), 3))
    assert "listener.name.sasl_ssl.ssl.client.auth" not in props


def test_scram_users_are_created_for_both_mechanisms(tmp_path: Path) -> None:
    assert _listener(tmp_path).scram_arguments() == [
        "--add-scram", "SCRAM-SHA-256=[name=bob,password=b-pw]",
        "--add-scram", "SCRAM-SHA-512=[name=bob,password=b-pw]"]


def _time_wait_port() -> int:
    """A port whose server side closed first, so it sits in TIME_WAIT (what a killed broker leaves).
    The listener binds with SO_REUSEADDR as the JVM does; its connections inherit the flag."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the side that closes first holds TIME_WAIT
    client.close()
    server.close()
    return int(port)


def test_a_port_in_time_wait_counts_as_free(tmp_path: Path) -> None:
    port = _time_wait_port()
    assert port_is_free(port)
    plain = socket.socket()  # what the probe did before: no SO_REUSEADDR, so TIME_WAIT looked taken
    try:
        try:
            plain.bind(("127.0.0.1", port))
            bound = True
        except OSError:
            bound = False
        assert not bound
    finally:
        plain.close()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        assert not port_is_free(busy.getsockname()[1])
    finally:
        busy.close()


def test_remembered_ports_are_reused_even_in_time_wait(tmp_path: Path) -> None:
    kafka = LocalKafka(tmp_path, sasl_ssl=_listener(tmp_path))
    kafka.kafka_dir.mkdir(parents=True)
    ports = {"broker": _time_wait_port(), "controller": _time_wait_port(), "sasl_ssl": _time_wait_port()}
    kafka.ports_file.write_text(json.dumps(ports))
    assert kafka._choose_ports(fresh=False) == ports
    fresh = kafka._choose_ports(fresh=True)
    assert set(fresh) == set(ports) and len(set(fresh.values())) == 3


def test_ports_of_an_older_data_dir_are_read_from_its_properties(tmp_path: Path) -> None:
    kafka = LocalKafka(tmp_path)
    kafka.kafka_dir.mkdir(parents=True)
    kafka.properties_file.write_text(render_server_properties(_time_wait_port(), _time_wait_port(), tmp_path))
    chosen = kafka._choose_ports(fresh=False)
    assert set(chosen) == {"broker", "controller"}
    assert f"PLAINTEXT://127.0.0.1:{chosen['broker']}" in kafka.properties_file.read_text()
