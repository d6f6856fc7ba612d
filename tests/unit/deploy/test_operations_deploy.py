"""The operations files agree with the code: the Grafana dashboard and the Prometheus rules use only
metrics the workers export, the probes of docker-compose.yml and Kubernetes hit /health and /ready
on the configured port, and the `cluster` compose profile is wired (Keeper, two replicas, macros)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from streams.runtime.metrics import Metrics

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "deploy" / "grafana" / "creditflow.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s" / "creditflow.yaml"
_METRIC = re.compile(r"\b((?:creditflow|process)_[a-z0-9_]+)")


def _exported() -> set[str]:
    """Sample names the workers export, also of labelled families that have no sample yet."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    names: set[str] = set()
    for family in text_string_to_metric_families(Metrics().exposition().decode()):
        names.update(s.name for s in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def _exprs_in_dashboard() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def _rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_dashboard_and_rules_use_exported_metrics_only() -> None:
    exported = _exported()
    used = {m for e in [*_exprs_in_dashboard(), *(r["expr"] for r in _rules())] for m in _METRIC.findall(e)}
    assert used, "no metric referenced"
    assert used <= exported, used - exported
    assert {"creditflow_consumer_lag", "creditflow_dead_letters_total", "creditflow_alerts_total",
            "creditflow_sink_rows_total", "creditflow_ready"} <= used


def test_dashboard_is_well_formed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] == "creditflow"
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "job", "instance"}


def test_alert_rules_are_complete() -> None:
    rules = _rules()
    names = {r["alert"] for r in rules}
    assert {"CreditflowConsumerLagHigh", "CreditflowDeadLetters", "CreditflowWorkerNotReady",
            "CreditflowSinkRetrying"} <= names
    for rule in rules:
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


@pytest.mark.parametrize("name", ["processor", "sink"])
def test_compose_workers_are_healthy_when_ready(name: str) -> None:
    service = _compose()["services"][name]
    port = service["environment"]["CREDITFLOW_WEB_PORT"]
    assert service["environment"]["CREDITFLOW_WEB_HOST"] == "0.0.0.0"
    assert f"http://127.0.0.1:{port}/ready" in " ".join(service["healthcheck"]["test"])


def test_k8s_probes_use_the_configured_port() -> None:
    docs = [d for d in yaml.safe_load_all(K8S.read_text()) if d]
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    for d in (d for d in docs if d["kind"] == "Deployment"):
        container = d["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert str(ports["web"]) == config["CREDITFLOW_WEB_PORT"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "web"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "web"}
        assert d["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == config["CREDITFLOW_WEB_PORT"]


def test_cluster_profile_has_keeper_and_two_configured_replicas() -> None:
    services = _compose()["services"]
    profiled = {n for n, s in services.items() if "cluster" in s.get("profiles", [])}
    assert profiled == {"clickhouse-keeper", "clickhouse-01", "clickhouse-02"}
    replicas = {n: services[n] for n in ("clickhouse-01", "clickhouse-02")}
    for name, service in replicas.items():
        assert service["environment"]["REPLICA"] == name == service["hostname"]
        for mount in service["volumes"]:
            source = ROOT / mount.split(":")[0]
            assert source.is_file(), mount
            ET.parse(source)
    config = ET.parse(ROOT / "deploy" / "clickhouse" / "cluster" / "cluster.xml").getroot()
    cluster = config.find("remote_servers/creditflow")
    assert cluster is not None
    hosts = [h.text for h in cluster.iter("host")]
    assert hosts == list(replicas)
    macros = config.find("macros")
    assert macros is not None and macros.find("shard") is not None
    assert macros.find("replica") is not None and macros.find("replica").get("from_env") == "REPLICA"  # type: ignore[union-attr]
    keeper = config.find("zookeeper/node/host")
    assert keeper is not None and keeper.text == services["clickhouse-keeper"]["hostname"]


def test_alert_rules_pass_promtool() -> None:
    """Syntax and the rule unit tests (deploy/prometheus/alerts_test.yml) with Prometheus' own tool.
    Needs promtool on PATH (or PROMTOOL); skipped without it."""
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not promtool:
        pytest.skip("no promtool")
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULES.with_name("alerts_test.yml"))]):
        result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
