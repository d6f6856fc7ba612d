"""Bad input on the command line: one line on stderr, a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli.main", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


@pytest.mark.parametrize(
    ("args", "env", "code", "says"),
    [
        (["demo", "--events", "-5"], {}, 2, "--events"),
        (["kafka", "frobnicate"], {}, 2, "frobnicate"),
        (["nosuch"], {}, 2, "No such command"),
        (["policy", "explain", "{bad"], {}, 1, "not valid JSON"),
        (["policy", "show", "--path", "/nonexistent/policy.toml"], {}, 1, "cannot read policy file"),
        (["policy", "show"], {"CREDITFLOW_PARTITIONS": "zero"}, 2, "CREDITFLOW_PARTITIONS"),
        (["query", "DROP TABLE events"], {}, 2, "read-only"),
        # The HTTP client's own retry warnings are not printed on top of the command's line.
        (["migrate"], {"CLICKHOUSE_URL": "http://u:pw@127.0.0.1:1/db"}, 1, "cannot reach ClickHouse at http://u:***@"),
    ],
)
def test_bad_input_gets_one_line(args: list[str], env: dict[str, str], code: int, says: str) -> None:
    result = _run(*args, **env)
    assert result.returncode == code, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and says in lines[0]
    assert "Traceback" not in result.stderr


def test_policy_show_prints_the_published_table() -> None:
    result = _run("policy", "show")
    assert result.returncode == 0, result.stderr
    for text in ("EXTENDED_CONTEXT", "3.5x", "COMPLEX_REASONING", "2.0x", "TOOL_USE", "1.5x", "2026.11-1"):
        assert text in result.stdout


def test_policy_explain_says_when_a_model_is_priced_at_the_fallback() -> None:
    unpriced = _run("policy", "explain", '{"model": "nova-preview", "input_tokens": 1000}')
    assert unpriced.returncode == 0, unpriced.stderr
    assert "not in policy" in unpriced.stdout and "fallback" in unpriced.stdout
    priced = _run("policy", "explain", '{"model": "atlas-small", "input_tokens": 1000}')
    assert priced.returncode == 0 and "fallback" not in priced.stdout


def test_evaluate_rejects_a_bad_seed_in_one_line() -> None:
    result = _run("evaluate", "--seeds", "1x", "--offline")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "1x" in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        # Variables Kafka users export are named as they export them, not with the CREDITFLOW_ prefix.
        (["worker"], {"KAFKA_SASL_MECHANISM": "GSSAPI"}, "invalid configuration KAFKA_SASL_MECHANISM:"),
        (["produce", "--count", "1"], {"KAFKA_SSL_CHECK_HOSTNAME": "maybe"},
         "invalid configuration KAFKA_SSL_CHECK_HOSTNAME:"),
        (["worker"], {"KAFKA_BOOTSTRAP_SERVERS": "kafka-1:abc"}, "KAFKA_BOOTSTRAP_SERVERS"),
        (["alerts", "tail"], {"KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092,kafka-2:70000"}, "kafka-2:70000"),
        (["alerts", "tail"], {"CREDITFLOW_PARTITIONS": "abc"}, "CREDITFLOW_PARTITIONS"),
        (["worker"], {"CREDITFLOW_LOG_LEVEL": "LOUD"}, "CREDITFLOW_LOG_LEVEL"),
    ],
)
def test_a_bad_setting_stops_every_command_in_one_line_naming_it(args: list[str], env: dict[str, str],
                                                                 says: str) -> None:
    result = _run(*args, CREDITFLOW_DATA_DIR="/nonexistent/creditflow", **env)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error: ") and says in lines[0], lines


def test_an_empty_variable_is_unset() -> None:
    # Deployment templates export optional settings as "" (KAFKA_SSL_CERTFILE: ${KAFKA_SSL_CERTFILE:-}):
    # that means "not set", not the current directory as a certificate file.
    from streams.runtime.kafka_clients import security_kwargs
    from streams.settings import Settings

    env = {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "", "KAFKA_SSL_CERTFILE": "",
           "KAFKA_SSL_KEYFILE": "", "CREDITFLOW_TOPIC_PREFIX": "", "CREDITFLOW_PARTITIONS": ""}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        settings = Settings()
    assert settings.kafka_ssl_certfile is None and settings.kafka_ssl_cafile is None and settings.partitions == 6
    assert security_kwargs(settings)["security_protocol"] == "SSL"


def test_settings_never_print_the_clickhouse_password() -> None:
    from streams.settings import Settings

    settings = Settings(clickhouse_url="http://creditflow:S3cret-pw@clickhouse:8123/db", kafka_sasl_password="k-pw")
    for text in (repr(settings), str(settings)):
        assert "S3cret-pw" not in text and "k-pw" not in text, text
        assert "clickhouse:8123" in text
    assert settings.resolved_clickhouse_url == "http://creditflow:S3cret-pw@clickhouse:8123/db"


def test_a_taken_web_port_stops_the_worker_in_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # An unreachable broker would fail later: the port is checked before anything connects.
        result = _run("worker", CREDITFLOW_WEB_PORT=str(port), CREDITFLOW_DATA_DIR=str(tmp_path),
                      KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", CLICKHOUSE_URL=f"chdb://{tmp_path / 'ch'}")
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode != 0 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "CREDITFLOW_WEB_PORT" in lines[0] and str(port) in lines[0], lines


def test_an_unreachable_running_worker_is_one_line(tmp_path: Path) -> None:
    """A worker announced under the data dir (alive: this test's own pid) whose live SQL does not
    answer, as while it shuts down: one line, no library warnings."""
    import json
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workers = tmp_path / "workers"
    workers.mkdir()
    (workers / f"{os.getpid()}.json").write_text(json.dumps(
        {"url": f"http://127.0.0.1:{port}", "pid": os.getpid(), "role": "all", "app_id": "t"}))
    result = _run("query", "SELECT 1", CREDITFLOW_DATA_DIR=str(tmp_path))
    assert result.returncode == 1, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "refused" in lines[0], lines[0]
