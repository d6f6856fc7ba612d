"""Default static group membership: an id stable across a worker's restarts and unique per worker."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.runtime import membership
from streams.runtime.kafka_clients import KafkaClients, faust_broker_settings
from streams.settings import Settings


@pytest.fixture(autouse=True)
def _fresh_seats() -> Iterator[None]:
    membership.release_seats()
    yield
    membership.release_seats()


def _settings(data_dir: Path, **kw: object) -> Settings:
    return Settings(kafka_bootstrap_servers="h:1", data_dir=data_dir, **kw)  # type: ignore[arg-type]


def _hold_seat(data_dir: Path) -> subprocess.Popen[bytes]:
    """Another worker process holding the lowest free seat of ``data_dir``."""
    code = ("import sys, time; from pathlib import Path; from streams.runtime import membership; "
            "print(membership.take_seat(Path(sys.argv[1])).number, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(data_dir)], stdout=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[3])
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"0"
    return proc


def test_the_default_id_is_stable_and_names_host_dir_seat_and_port(tmp_path: Path) -> None:
    one = membership.default_id("pod-7", tmp_path, 0, 6066)
    assert one == membership.default_id("pod-7", tmp_path / ".", 0, 6066) and one.startswith("pod-7-")
    others = {membership.default_id("pod-8", tmp_path, 0, 6066),  # another host
              membership.default_id("pod-7", tmp_path / "x", 0, 6066),  # another data dir
              membership.default_id("pod-7", tmp_path, 1, 6066),  # another seat
              membership.default_id("pod-7", tmp_path, 0, 6067)}  # another web port
    assert one not in others and len(others) == 4
    # Only what Kafka accepts in group.instance.id.
    assert membership.default_id("my host/ä", tmp_path, 0, 1).startswith("my_host__-")


def test_a_worker_gets_its_default_id_back_after_a_restart(tmp_path: Path) -> None:
    first = membership.settle(_settings(tmp_path))
    assert first.web_port > 0 and first.group_instance_id
    assert first.group_instance_id == membership.default_id(socket.gethostname(), tmp_path, 0, first.web_port)
    membership.release_seats()  # the process ends (SIGKILL releases the flock too)
    again = membership.settle(_settings(tmp_path))
    assert (again.group_instance_id, again.web_port) == (first.group_instance_id, first.web_port)
    # Static for the processor, the sink and Faust's consumer.
    assert KafkaClients(again).group_member("processor")["group_instance_id"] == f"{again.group_instance_id}-processor"
    faust_id = faust_broker_settings(again, "h:1")["consumer_group_instance_id"]
    assert faust_id == f"{again.group_instance_id}-faust-{again.web_port}"


def test_two_workers_sharing_a_data_dir_get_distinct_ids(tmp_path: Path) -> None:
    other = _hold_seat(tmp_path)
    try:
        mine = membership.settle(_settings(tmp_path))
        seat = membership.take_seat(tmp_path)
        assert seat is not None and seat.number == 1
        assert mine.group_instance_id == membership.default_id(socket.gethostname(), tmp_path, 1, mine.web_port)
    finally:
        other.kill()
        other.wait()
    # The killed worker's seat is free again: the next worker to start takes it.
    membership.release_seats()
    seat = membership.take_seat(tmp_path)
    assert seat is not None and seat.number == 0


def test_a_port_taken_meanwhile_gives_a_new_id_rather_than_a_wrong_url(tmp_path: Path) -> None:
    first = membership.settle(_settings(tmp_path))
    membership.release_seats()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((first.web_host, first.web_port))
        squatter.listen()
        moved = membership.settle(_settings(tmp_path))
    assert moved.web_port != first.web_port and moved.group_instance_id != first.group_instance_id
    membership.release_seats()
    # The new port is the one remembered from now on.
    assert membership.settle(_settings(tmp_path)).web_port == moved.web_port


def test_explicit_settings_win(tmp_path: Path) -> None:
    named = membership.settle(_settings(tmp_path, group_instance_id="pod-3", web_port=6066))
    assert (named.group_instance_id, named.web_port) == ("pod-3", 6066)
    for off in ("", "none"):
        dynamic = membership.settle(_settings(tmp_path, group_instance_id=off))
        assert membership.static_id(dynamic) is None and dynamic.web_port > 0
        assert "group_instance_id" not in KafkaClients(dynamic).group_member("processor")
        assert faust_broker_settings(dynamic, "h:1")["consumer_group_instance_id"] is None


def test_the_environment_opt_out(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CREDITFLOW_GROUP_INSTANCE_ID", "none")
    assert membership.static_id(membership.settle(_settings(tmp_path))) is None
    # An empty variable is an unset one (as for every setting): the default id.
    monkeypatch.setenv("CREDITFLOW_GROUP_INSTANCE_ID", "")
    assert membership.static_id(membership.settle(_settings(tmp_path))) is not None
    monkeypatch.delenv("CREDITFLOW_GROUP_INSTANCE_ID")
    assert membership.static_id(membership.settle(_settings(tmp_path))) is not None
