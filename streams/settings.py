"""The one place configuration lives: a pydantic settings object read from the environment."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Role(StrEnum):
    ALL = "all"
    PROCESSOR = "processor"
    SINK = "sink"


class Settings(BaseSettings):
    """Every knob of creditflow. Unprefixed names follow the Kafka/ClickHouse conventions users
    already export; the rest carry the ``CREDITFLOW_`` prefix."""

    # An empty variable is an unset one: deployment templates export optional settings as ""
    # (``KAFKA_SSL_CERTFILE: ${KAFKA_SSL_CERTFILE:-}``), which must not mean "the current directory".
    model_config = SettingsConfigDict(env_prefix="CREDITFLOW_", extra="ignore", populate_by_name=True,
                                      env_ignore_empty=True)

    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias="KAFKA_BOOTSTRAP_SERVERS",
        description="host:port list of an existing Kafka cluster; unset = start/use the local broker",
    )
    clickhouse_url: str | None = Field(
        default=None,
        validation_alias="CLICKHOUSE_URL",
        description="chdb:///path (embedded engine) or http(s)://user:pass@host:8123/db; "
        "unset = chdb under the data dir",
    )
    schema_registry_url: str | None = Field(
        default=None,
        validation_alias="SCHEMA_REGISTRY_URL",
        description="Confluent schema registry; when set, producers write the Confluent wire format",
    )
    data_dir: Path = Field(default=Path(".creditflow"), description="local state: broker, chDB, caches")
    topic_prefix: str = Field(default="", description="prefix for every topic name")
    app_id: str = Field(default="creditflow", description="Faust app id; prefix of consumer groups and changelogs")
    role: Role = Field(default=Role.ALL, description="which roles this worker runs: all, processor, sink")
    partitions: int = Field(default=6, ge=1, description="partitions of topics the project creates")
    replication_factor: int = Field(default=1, ge=1, description="replication of topics the project creates")
    retention_hours: int = Field(default=168, ge=1, description="retention of topics the project creates")
    policy_path: Path | None = Field(default=None, description="credit policy TOML; unset = shipped default")
    sink_batch_rows: int = Field(default=50_000, ge=1, description="rows per partition that force a flush")
    sink_flush_seconds: float = Field(
        default=0.5, gt=0,
        description="max age of buffered rows; 0.5 measured best for latency and throughput (1.0 and 0.25 were worse)",
    )
    compression: Literal["zstd", "lz4", "snappy", "gzip", "none"] = Field(
        default="zstd",
        description="codec of record batches the workers produce; aiokafka's lz4 runs at level 9 (~35 MB/s "
        "here), zstd at level 3 is ~10x faster and smaller",
    )
    process_batch: int = Field(default=20_000, ge=1, description="events per processor batch")
    process_within: float = Field(default=0.25, gt=0, description="max wait to fill a processor batch (s)")
    process_fetch_wait_ms: int = Field(
        default=150, ge=0, le=5_000,
        description="how long the broker may hold a processor fetch to fill it (ms); 0 answers at once",
    )
    state_hot_keys: int = Field(
        default=20_000, ge=0,
        description="decoded entries kept per state table (most recently written or read); the other keys "
        "are kept in a local RocksDB store (CREDITFLOW_STATE_DIR) and decoded when used",
    )
    state_dir: str | None = Field(
        default=None, description="directory for the local state stores (RocksDB); default: the system temp dir",
    )
    detector_flush_seconds: float = Field(default=30.0, gt=0, description="how often quiet accounts are re-evaluated")
    events_ttl_days: int = Field(default=730, ge=1, description="TTL of raw enriched events in ClickHouse")
    log_level: str = Field(default="WARNING", description="worker log level")
    web_host: str = Field(default="127.0.0.1", description="address the worker's HTTP server listens on")
    web_port: int = Field(
        default=0, ge=0, le=65535,
        description="port of the worker's HTTP server; 0 = a free port, announced under <data dir>/workers/ and "
        "taken again when the worker restarts while it is still free (streams/runtime/membership.py)",
    )
    # Live SQL: the read-only ClickHouse HTTP interface the chDB-holding worker serves on its web
    # server (sinks/sql_bridge.py), and the limits of `creditflow query` too.
    sql_user: str = Field(default="default", description="user name live SQL accepts")
    sql_password: SecretStr | None = Field(
        default=None,
        description="password live SQL requires; when the web server listens beyond loopback, queries are "
        "refused until one is set",
    )
    sql_max_execution_seconds: float = Field(default=30.0, gt=0, le=3600, description="time limit of one query")
    sql_max_result_rows: int = Field(default=1_000_000, ge=1, description="rows one query may return")
    sql_max_result_bytes: int = Field(default=256 * 1024 * 1024, ge=1, description="bytes one query may return")
    sql_max_memory_bytes: int = Field(default=2 * 1024**3, ge=1, description="memory one query may use")
    sql_max_concurrent_queries: int = Field(
        default=4, ge=1,
        description="live SQL queries queued with the sink's inserts at once; the others wait up to the time "
        "limit, then are turned away",
    )

    # -- operations: readiness and the ClickHouse cluster (docs/operations.md) --
    ready_stall_seconds: float = Field(
        default=120.0, gt=0,
        description="/ready fails when a consumer has neither polled nor committed a batch for this long",
    )
    clickhouse_cluster: str | None = Field(
        default=None,
        validation_alias="CLICKHOUSE_CLUSTER",
        description="cluster name from the servers' remote_servers: migrations create Replicated tables "
        "ON CLUSTER with Distributed tables in front; unset = single node",
    )

    @field_validator("clickhouse_cluster")
    @classmethod
    def _cluster_is_an_identifier(cls, v: str | None) -> str | None:
        if v and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError("CLICKHOUSE_CLUSTER must be a plain identifier (letters, digits, '_')")
        return v or None

    # Exactly-once in the processor (streams/runtime/checkpoint.py, streams/credits/dedup.py): idempotency
    # by event id. An id already metered for its account within the window is dead-lettered as DUPLICATE.
    dedup_window_days: float = Field(
        default=7.0, ge=0,
        description="how long (event time) an account remembers the event ids it was metered for; a resend "
        "within it is not metered again",
    )
    dedup_max_ids: int = Field(
        default=10_000, ge=1,
        description="most event ids remembered per account (12 bytes each in its state); beyond it the oldest "
        "are forgotten first",
    )
    # streams/credits/account_state.py: the usage state's encoding. Every version reads both.
    usage_state_legacy_json: bool = Field(
        default=False,
        description="write account usage state as the JSON objects of versions before AccountUsage (which "
        "cannot read the MessagePack records): set it for the first roll of a rolling upgrade from such a "
        "version, unset it in a second roll once no old worker runs",
    )

    # -- Kafka clients: security, delivery and group membership (streams/runtime/kafka_clients.py) --
    # Named as Kafka users export them; every client the project makes takes them from here.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", validation_alias="KAFKA_SECURITY_PROTOCOL",
        description="how clients talk to the brokers: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="PLAIN", validation_alias="KAFKA_SASL_MECHANISM", description="SASL mechanism (SASL_* protocols)",
    )
    kafka_sasl_username: str | None = Field(default=None, validation_alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password: SecretStr | None = Field(
        default=None, validation_alias="KAFKA_SASL_PASSWORD", description="never logged or printed",
    )
    kafka_ssl_cafile: Path | None = Field(
        default=None, validation_alias="KAFKA_SSL_CAFILE",
        description="PEM CA bundle the broker certificates are checked against; unset = the system's",
    )
    kafka_ssl_certfile: Path | None = Field(
        default=None, validation_alias="KAFKA_SSL_CERTFILE", description="PEM client certificate (mutual TLS)",
    )
    kafka_ssl_keyfile: Path | None = Field(
        default=None, validation_alias="KAFKA_SSL_KEYFILE", description="PEM private key of the client certificate",
    )
    kafka_ssl_key_password: SecretStr | None = Field(default=None, validation_alias="KAFKA_SSL_KEY_PASSWORD")
    kafka_ssl_check_hostname: bool = Field(
        default=True, validation_alias="KAFKA_SSL_CHECK_HOSTNAME",
        description="verify that a broker's certificate names the host connected to (the certificate chain "
        "is verified either way)",
    )
    kafka_delivery_timeout_ms: int = Field(
        default=120_000, ge=1_000, validation_alias="KAFKA_DELIVERY_TIMEOUT_MS",
        description="the producer API raises DeliveryError for records not acknowledged within this long",
    )
    kafka_session_timeout_ms: int = Field(
        default=10_000, ge=6_000, validation_alias="KAFKA_SESSION_TIMEOUT_MS",
        description="a silent worker's partitions move after this long (the broker's minimum is 6 s)",
    )
    group_instance_id: str | None = Field(
        default=None,
        description="static group member id (KIP-345), unique to this worker and stable across its restarts; "
        "unset = derived from the host name, data dir and web port (streams/runtime/membership.py); "
        "none = dynamic membership",
    )
    kafka_log_interval_seconds: float = Field(
        default=30.0, ge=0,
        description="repeated Kafka client errors (broker unreachable ...) are logged once per kind per interval",
    )

    # Schema-registry intake: lookups never block the loop; records waiting for an id hold their partition.
    registry_wait_seconds: float = Field(
        default=1.0, ge=0, description="how long a batch waits for registry lookups before holding back the "
        "partitions that need the ids still unanswered",
    )
    registry_lookup_concurrency: int = Field(default=4, ge=1, description="registry lookups in flight at once")
    registry_timeout_seconds: float = Field(default=5.0, gt=0, description="timeout of one registry lookup")
    registry_not_found_ttl_seconds: float = Field(
        default=300.0, ge=0, description="how long a schema id the registry said it does not have is not asked again",
    )
    registry_backoff_max_seconds: float = Field(
        default=30.0, gt=0, description="longest wait between lookups while the registry is unreachable",
    )

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap_is_host_port_list(cls, v: str | None) -> str | None:
        if not v:
            return None
        for address in v.split(","):
            host, _, port = address.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{address.strip()!r} is not host:port (a comma-separated list of them)")
        return v

    @field_validator("log_level")
    @classmethod
    def _log_level_is_known(cls, v: str) -> str:
        if not isinstance(logging.getLevelName(v.upper()), int):
            raise ValueError(f"{v!r} is not a log level (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
        return v.upper()

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # The ClickHouse URL may carry the password (the Kafka ones are SecretStr already).
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "clickhouse_url" and value else value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_topic_safe(cls, v: str) -> str:
        if v and not all(c.isalnum() or c in "._-" for c in v):
            raise ValueError("topic prefix may hold only letters, digits, '.', '_' and '-'")
        return v

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def compression_type(self) -> str | None:
        """``compression`` as aiokafka and Faust take it."""
        return None if self.compression == "none" else self.compression

    @property
    def resolved_clickhouse_url(self) -> str:
        if self.clickhouse_url:
            return self.clickhouse_url
        return f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def kafka_dir(self) -> Path:
        return self.data_dir / "kafka"


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit for logs and messages."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = f"{parsed.username}:***@{parsed.hostname}" + (f":{parsed.port}" if parsed.port else "")
    return parsed._replace(netloc=netloc).geturl()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
