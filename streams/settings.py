"""The one place configuration lives: a pydantic settings object read from the environment."""

from __future__ import annotations

import re
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Role(StrEnum):
    ALL = "all"
    PROCESSOR = "processor"
    SINK = "sink"


class Settings(BaseSettings):
    """Every knob of creditflow. Unprefixed names follow the Kafka/ClickHouse conventions users
    already export; the rest carry the ``CREDITFLOW_`` prefix."""

    model_config = SettingsConfigDict(env_prefix="CREDITFLOW_", extra="ignore", populate_by_name=True)

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
        description="port of the worker's HTTP server; 0 = any free port, announced under <data dir>/workers/",
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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
