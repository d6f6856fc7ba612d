"""The launcher's pure parts and its safety checks, without starting a broker."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deploy.kafka import launcher
from deploy.kafka.launcher import (
    KafkaLaunchError,
    LocalKafka,
    default_cache_dir,
    is_kafka_process,
    metadata_probe,
    new_cluster_id,
    read_ports,
    render_server_properties,
)


def _parse(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_server_properties_is_a_single_node_kraft_config(tmp_path: Path) -> None:
    props = _parse(render_server_properties(41001, 41002, tmp_path / "logs"))
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:41001,CONTROLLER://127.0.0.1:41002"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:41001"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:41002"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["log.dirs"] == str(tmp_path / "logs")
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr"):
        assert props[key] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["num.partitions"] == "6"
    assert props["auto.create.topics.enable"] == "false"


def test_ports_round_trip_through_the_written_file(tmp_path: Path) -> None:
    path = tmp_path / "server.properties"
    assert read_ports(path) is None
    path.write_text(render_server_properties(41001, 41002, tmp_path))
    assert read_ports(path) == (41001, 41002)


def test_cluster_id_is_16_bytes_base64url() -> None:
    cid = new_cluster_id()
    assert len(cid) == 22 and "=" not in cid
    assert len(base64.urlsafe_b64decode(cid + "==")) == 16
    assert new_cluster_id() != cid


def test_cache_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CREDITFLOW_KAFKA_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CREDITFLOW_KAFKA_CACHE")
    assert default_cache_dir().parts[-3:] == ("creditflow", "kafka-3.9.1", "lib")


@pytest.fixture
def sleeper() -> Any:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_stale_state_with_foreign_pid_is_not_killed(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    broker = LocalKafka(tmp_path)
    broker.kafka_dir.mkdir(parents=True)
    broker.state_file.write_text(json.dumps({"pid": sleeper.pid, "bootstrap": "127.0.0.1:1"}))

    assert not is_kafka_process(sleeper.pid)
    status = broker.status()
    assert status is not None and status.pid == sleeper.pid and not status.alive

    assert broker.stop(timeout=1) is False
    assert sleeper.poll() is None, "a process that is not our broker must never be signalled"
    assert not broker.state_file.exists()


@pytest.mark.parametrize("content", ["", "{not json", '{"pid": "12"}', "[1, 2]"])
def test_unreadable_state_is_treated_as_absent(tmp_path: Path, content: str) -> None:
    broker = LocalKafka(tmp_path)
    broker.kafka_dir.mkdir(parents=True)
    broker.state_file.write_text(content)
    assert broker.status() is None
    assert broker.stop() is False
    assert not broker.state_file.exists()


def test_is_kafka_process_rejects_self_and_missing_pids() -> None:
    import os

    assert not is_kafka_process(os.getpid())
    assert not is_kafka_process(0)
    assert not is_kafka_process(2**22 + 12345)


def test_probe_of_a_closed_port_is_false() -> None:
    assert not metadata_probe(f"127.0.0.1:{launcher.free_port()}", timeout=0.5)


def test_assemble_without_maven_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher.shutil, "which", lambda name: None)
    with pytest.raises(KafkaLaunchError, match="mvn not found"):
        LocalKafka(tmp_path, cache_dir=tmp_path / "cache" / "lib").assemble()


def test_assemble_without_java_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(launcher.shutil, "which", lambda name: "/usr/bin/mvn" if name == "mvn" else None)
    with pytest.raises(KafkaLaunchError, match="java not found"):
        LocalKafka(tmp_path, cache_dir=tmp_path / "cache" / "lib").assemble()


def test_complete_cache_is_reused_and_half_copy_is_redone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        out = Path(next(a for a in cmd if a.startswith("-DoutputDirectory=")).split("=", 1)[1])
        out.mkdir(parents=True)
        (out / "kafka_2.13-3.9.1.jar").write_bytes(b"jar")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(launcher.subprocess, "run", fake_run)
    monkeypatch.setattr(launcher.shutil, "which", lambda name: f"/usr/bin/{name}")
    cache = tmp_path / "cache" / "lib"
    # A copy interrupted before the marker was written: jars present, marker missing.
    cache.mkdir(parents=True)
    (cache / "partial.jar").write_bytes(b"")

    kafka = LocalKafka(tmp_path, cache_dir=cache)
    assert kafka.assemble() == cache
    assert len(calls) == 1
    assert not (cache / "partial.jar").exists()
    assert (cache / "kafka_2.13-3.9.1.jar").exists()

    assert kafka.assemble() == cache
    assert len(calls) == 1, "a complete cache must not run Maven again"


def test_cli_status_and_stop_without_a_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from streams.cli.kafka import kafka
    from streams.settings import get_settings

    monkeypatch.setenv("CREDITFLOW_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        status = runner.invoke(kafka, ["status"])
        assert status.exit_code == 1 and "no local broker" in status.output
        stop = runner.invoke(kafka, ["stop"])
        assert stop.exit_code == 0 and "no local broker running" in stop.output
        assert runner.invoke(kafka, ["restart"]).exit_code == 2

        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
        get_settings.cache_clear()
        start = runner.invoke(kafka, ["start"])
        assert start.exit_code == 1
        assert start.output.startswith("error: KAFKA_BOOTSTRAP_SERVERS is set")
        assert start.exception is None or isinstance(start.exception, SystemExit)
    finally:
        get_settings.cache_clear()


def test_cluster_ids_never_look_like_an_option() -> None:
    # kafka-storage's argparse reads "-t -abc..." as a missing value plus an unknown flag.
    from deploy.kafka.launcher import new_cluster_id

    ids = [new_cluster_id() for _ in range(5000)]
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 for i in ids)
