"""Run a real single-node Apache Kafka broker (KRaft) as a child process, without Docker.

The broker classpath is assembled from Maven Central once (``assemble``) and cached; ``start``
writes a KRaft ``server.properties`` on free loopback ports, formats the storage, launches
``kafka.Kafka`` in its own session and waits until it answers a Kafka Metadata request. The
state of a running broker lives in ``<data_dir>/kafka/broker.json`` so another process (the CLI,
a later test run) can find, reuse or stop it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

KAFKA_VERSION = "3.9.1"
HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J = HERE / "log4j.properties"
MARKER = ".creditflow-complete"
STATE_FILE = "broker.json"
# The ports a broker was given, kept across restarts so clients find it where it was.
PORTS_FILE = "ports.json"
LOG_FILE = "broker.log"
PROPERTIES_FILE = "server.properties"
MAIN_CLASS = "kafka.Kafka"
DEFAULT_JVM_OPTS = ("-Xms128m", "-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true")

_LOOPBACK = "127.0.0.1"


class KafkaLaunchError(RuntimeError):
    """The local broker could not be assembled, started or reached."""


@dataclass(frozen=True)
class BrokerStatus:
    pid: int
    bootstrap: str
    alive: bool
    log_file: str | None = None
    started_at: str | None = None
    sasl_ssl_bootstrap: str | None = None


def default_cache_dir() -> Path:
    env = os.environ.get("CREDITFLOW_KAFKA_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "creditflow" / f"kafka-{KAFKA_VERSION}" / "lib"


@dataclass(frozen=True)
class SaslSslListener:
    """A SASL_SSL listener next to the plaintext one, as managed Kafka services offer it.

    The broker's TLS identity is a PKCS#12 keystore; with ``client_ca`` set, clients must also present
    a certificate signed by it (mutual TLS). PLAIN users live in the JAAS config, SCRAM users (both
    SHA-256 and SHA-512) are written into the metadata log when the storage is formatted.
    """

    keystore: Path
    keystore_password: str
    client_ca: Path | None = None
    plain_users: Mapping[str, str] = field(default_factory=dict)
    scram_users: Mapping[str, str] = field(default_factory=dict)
    # The name clients connect to; the broker certificate must carry it for hostname verification.
    advertised_host: str = "localhost"

    def properties(self, port: int) -> dict[str, str | int]:
        prefix = "listener.name.sasl_ssl."
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        plain_users = " ".join(f'user_{name}="{password}"' for name, password in self.plain_users.items())
        props: dict[str, str | int] = {
            f"{prefix}sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
            f"{prefix}plain.sasl.jaas.config":
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};",
            f"{prefix}scram-sha-256.sasl.jaas.config": scram,
            f"{prefix}scram-sha-512.sasl.jaas.config": scram,
            f"{prefix}ssl.keystore.type": "PKCS12",
            f"{prefix}ssl.keystore.location": str(self.keystore),
            f"{prefix}ssl.keystore.password": self.keystore_password,
            f"{prefix}ssl.key.password": self.keystore_password,
        }
        if self.client_ca is not None:
            props |= {f"{prefix}ssl.client.auth": "required", f"{prefix}ssl.truststore.type": "PEM",
                      f"{prefix}ssl.truststore.location": str(self.client_ca)}
        return props

    def scram_arguments(self) -> list[str]:
        """``kafka-storage format`` arguments that create the SCRAM users."""
        return [arg for name, password in self.scram_users.items()
                for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512")
                for arg in ("--add-scram", f"{mechanism}=[name={name},password={password}]")]


def render_server_properties(broker_port: int, controller_port: int, log_dir: Path,
                             sasl_ssl: SaslSslListener | None = None, sasl_ssl_port: int | None = None) -> str:
    """The KRaft config of a combined broker+controller node sized for one machine."""
    listeners = f"PLAINTEXT://{_LOOPBACK}:{broker_port},CONTROLLER://{_LOOPBACK}:{controller_port}"
    advertised = f"PLAINTEXT://{_LOOPBACK}:{broker_port}"
    protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    if sasl_ssl is not None and sasl_ssl_port is not None:
        listeners += f",SASL_SSL://{_LOOPBACK}:{sasl_ssl_port}"
        advertised += f",SASL_SSL://{sasl_ssl.advertised_host}:{sasl_ssl_port}"
        protocols += ",SASL_SSL:SASL_SSL"
    props: dict[str, str | int] = {
        "process.roles": "broker,controller",
        "node.id": 1,
        "controller.quorum.voters": f"1@{_LOOPBACK}:{controller_port}",
        "listeners": listeners,
        "advertised.listeners": advertised,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": protocols,
        "log.dirs": str(log_dir),
        # A single node cannot hold the default 3 replicas of the internal topics.
        "offsets.topic.replication.factor": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "min.insync.replicas": 1,
        # Consumers in tests and the demo join one at a time; the default 3 s delay only slows them.
        "group.initial.rebalance.delay.ms": 0,
        "num.partitions": 6,
        # Topics are created deliberately (streams.runtime.topics.ensure_topics) so a typo fails loudly.
        "auto.create.topics.enable": "false",
        "offsets.topic.num.partitions": 6,
        "num.network.threads": 2,
        "num.io.threads": 4,
        "log.retention.hours": 168,
        "log.segment.bytes": 64 * 1024 * 1024,
    }
    if sasl_ssl is not None and sasl_ssl_port is not None:
        props |= sasl_ssl.properties(sasl_ssl_port)
    lines = ["# Written by deploy/kafka/launcher.py; regenerated on every start."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def read_ports(properties: Path) -> tuple[int, int] | None:
    """(broker, controller) ports of a previously written server.properties, if any."""
    try:
        text = properties.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("listeners="):
            ports = {}
            for listener in line.split("=", 1)[1].split(","):
                name, _, hostport = listener.partition("://")
                ports[name] = int(hostport.rsplit(":", 1)[1])
            if "PLAINTEXT" in ports and "CONTROLLER" in ports:
                return ports["PLAINTEXT"], ports["CONTROLLER"]
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_LOOPBACK, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether the broker can bind ``port``. With SO_REUSEADDR, as the JVM binds its server sockets:
    a port whose last connections are still in TIME_WAIT (a broker just killed) is free for it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((_LOOPBACK, port))
        except OSError:
            return False
        return True


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, base64url without padding (what random-uuid prints).
    Never starting with '-': the storage tool's argument parser would take it for an option (Kafka's
    own random-uuid avoids that the same way)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_kafka_process(pid: int, properties: Path | None = None) -> bool:
    """True only for a live java process running kafka.Kafka (with our server.properties, if given).

    A state file can outlive its broker and the pid can be recycled; this check is what keeps
    ``stop`` from signalling an unrelated process.
    """
    if pid <= 0:
        return False
    argv = _cmdline(pid)
    if not argv or Path(argv[0]).name != "java" or MAIN_CLASS not in argv:
        return False
    return properties is None or str(properties) in argv


def _pid_running(pid: int) -> bool:
    """Alive and not a zombie (a zombie still has /proc/<pid> until its parent reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may itself hold spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def metadata_probe(bootstrap: str, timeout: float = 2.0) -> bool:
    """Send a Kafka Metadata request (v4, no topics) and check a broker is listed in the answer.

    A bare TCP connect is not enough: the KRaft broker accepts connections before it has
    registered with the controller, and clients fail until the response lists a broker. This is
    synchronous and dependency-free so it also works from inside a running event loop.
    """
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    client_id = b"creditflow-probe"
    correlation_id = 7
    header = struct.pack(">hhih", 3, 4, correlation_id, len(client_id)) + client_id
    # topics: empty array (not null) = metadata of no topic; allow_auto_topic_creation: false.
    body = struct.pack(">i?", 0, False)
    request = header + body
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(request)) + request)
            size = struct.unpack(">i", _recv_exact(sock, 4))[0]
            payload = _recv_exact(sock, size)
    except (OSError, struct.error, ValueError):
        return False
    # correlation_id int32, throttle_time_ms int32, brokers array length int32.
    if len(payload) < 12:
        return False
    corr, _throttle, n_brokers = struct.unpack(">iii", payload[:12])
    return corr == correlation_id and n_brokers >= 1


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ValueError("connection closed mid-response")
        buf += chunk
    return bytes(buf)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        with path.open(errors="replace") as f:
            return "".join(deque(f, maxlen=lines)).rstrip()
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise assemble/start across processes (parallel test sessions, CLI + tests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if not java:
        raise KafkaLaunchError("java not found: install a JDK 17+ (or set JAVA_HOME) to run the local broker")
    return java


class LocalKafka:
    """A single-node KRaft broker whose state lives under ``data_dir/kafka``."""

    def __init__(self, data_dir: Path, cache_dir: Path | None = None, sasl_ssl: SaslSslListener | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.sasl_ssl = sasl_ssl
        self.reused = False
        self._proc: subprocess.Popen[bytes] | None = None

    # -- paths ---------------------------------------------------------------------------------
    @property
    def kafka_dir(self) -> Path:
        return self.data_dir / "kafka"

    @property
    def state_file(self) -> Path:
        return self.kafka_dir / STATE_FILE

    @property
    def ports_file(self) -> Path:
        return self.kafka_dir / PORTS_FILE

    @property
    def log_file(self) -> Path:
        return self.kafka_dir / LOG_FILE

    @property
    def properties_file(self) -> Path:
        return (self.kafka_dir / PROPERTIES_FILE).resolve()

    @property
    def log_dir(self) -> Path:
        return (self.kafka_dir / "logs").resolve()

    # -- classpath -----------------------------------------------------------------------------
    def _pom_digest(self) -> str:
        return hashlib.sha256(POM.read_bytes()).hexdigest()

    def is_assembled(self) -> bool:
        marker = self.cache_dir / MARKER
        try:
            return marker.read_text().strip() == self._pom_digest()
        except OSError:
            return False

    def assemble(self) -> Path:
        """Copy the broker's jars from Maven Central into the cache once; return the lib dir.

        Maven writes into a scratch dir that is renamed into place only after it succeeded and
        the marker (holding the pom's digest) is written, so an interrupted copy or a changed pom
        is redone instead of leaving a broken classpath.
        """
        if self.is_assembled():
            return self.cache_dir
        with _file_lock(self.cache_dir.parent / f".{self.cache_dir.name}.lock"):
            if self.is_assembled():
                return self.cache_dir
            mvn = shutil.which("mvn")
            if not mvn:
                raise KafkaLaunchError(
                    "mvn not found: install Apache Maven to assemble the local Kafka broker "
                    "(or set KAFKA_BOOTSTRAP_SERVERS to use an existing cluster)"
                )
            find_java()
            scratch = Path(tempfile.mkdtemp(prefix=".assemble-", dir=self.cache_dir.parent))
            try:
                # Run on a copy of the pom so an installed (read-only) package is never written to.
                shutil.copy(POM, scratch / "pom.xml")
                lib = scratch / "lib"
                result = subprocess.run(
                    [mvn, "-q", "-B", "-f", str(scratch / "pom.xml"), "dependency:copy-dependencies",
                     f"-DoutputDirectory={lib}"],
                    capture_output=True, text=True, check=False,
                )
                if result.returncode != 0 or not any(lib.glob("kafka_2.13-*.jar")):
                    out = (result.stdout + result.stderr).strip().splitlines()[-20:]
                    raise KafkaLaunchError("maven failed to assemble Kafka:\n" + "\n".join(out))
                (lib / MARKER).write_text(self._pom_digest())
                if self.cache_dir.exists():
                    shutil.rmtree(self.cache_dir)
                lib.rename(self.cache_dir)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        return self.cache_dir

    # -- state -------------------------------------------------------------------------------
    def _read_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict) or not isinstance(state.get("pid"), int):
            return None
        return state

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)

    def status(self) -> BrokerStatus | None:
        state = self._read_state()
        if state is None:
            return None
        pid, bootstrap = int(state["pid"]), str(state.get("bootstrap", ""))
        alive = is_kafka_process(pid, self.properties_file) and metadata_probe(bootstrap)
        return BrokerStatus(pid, bootstrap, alive, state.get("log_file"), state.get("started_at"),
                            state.get("sasl_ssl_bootstrap"))

    @property
    def sasl_ssl_bootstrap(self) -> str | None:
        """Address of the running broker's SASL_SSL listener, if it has one."""
        state = self._read_state()
        return str(state["sasl_ssl_bootstrap"]) if state and state.get("sasl_ssl_bootstrap") else None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> str:
        """Start the broker (or reuse the live one recorded in the state file); return bootstrap."""
        self.kafka_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.kafka_dir / ".lock"):
            current = self.status()
            if current is not None and current.alive:
                self.reused = True
                return current.bootstrap
            if current is not None:
                # Recorded but not answering: a hung broker of ours is stopped, anything else
                # (a recycled pid) is left alone; either way the state is stale.
                self.stop()
            self.reused = False
            lib = self.assemble()
            java = find_java()
            deadline = time.monotonic() + timeout
            # Another process can grab a probed-free port before the JVM binds it; retry once.
            for attempt in range(2):
                ports = self._choose_ports(fresh=attempt > 0)
                try:
                    return self._launch(java, lib, ports, deadline)
                except _PortTaken:
                    continue
            raise KafkaLaunchError(
                "could not bind the broker to free loopback ports:\n" + _tail(self.log_file)
            )

    def _choose_ports(self, fresh: bool) -> dict[str, int]:
        """broker, controller (and sasl_ssl) ports: the remembered ones, so a restarted broker is
        where its clients already look, unless another process holds one of them now."""
        wanted = ["broker", "controller"] + (["sasl_ssl"] if self.sasl_ssl is not None else [])
        previous = None if fresh else self._remembered_ports()
        if previous is not None and all(name in previous for name in wanted):
            kept = {name: previous[name] for name in wanted}
            if all(port_is_free(port) for port in kept.values()):
                return kept
        ports: dict[str, int] = {}
        for name in wanted:
            port = free_port()
            while port in ports.values():
                port = free_port()
            ports[name] = port
        return ports

    def _remembered_ports(self) -> dict[str, int] | None:
        try:
            ports = json.loads(self.ports_file.read_text())
        except (OSError, ValueError):
            ports = None
        if isinstance(ports, dict) and all(isinstance(v, int) for v in ports.values()):
            return ports
        legacy = read_ports(self.properties_file)
        return {"broker": legacy[0], "controller": legacy[1]} if legacy else None

    def _java_cmd(self, java: str, lib: Path, main: str, *args: str) -> list[str]:
        return [
            java, *DEFAULT_JVM_OPTS,
            f"-Dlog4j.configuration={LOG4J.as_uri()}",
            f"-Dkafka.logs.dir={self.kafka_dir.resolve()}",
            "-cp", f"{lib}/*", main, *args,
        ]

    def _format_storage(self, java: str, lib: Path) -> None:
        if (self.log_dir / "meta.properties").exists():
            return
        scram = self.sasl_ssl.scram_arguments() if self.sasl_ssl is not None else []
        cmd = self._java_cmd(java, lib, "kafka.tools.StorageTool", "format", "--ignore-formatted",
                             "-t", new_cluster_id(), "-c", str(self.properties_file), *scram)
        result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
        if result.returncode != 0:
            raise KafkaLaunchError(
                "formatting KRaft storage failed:\n" + (result.stdout + result.stderr).strip()[-2000:]
            )

    def _launch(self, java: str, lib: Path, ports: Mapping[str, int], deadline: float) -> str:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        broker_port, controller_port = ports["broker"], ports["controller"]
        self.properties_file.write_text(render_server_properties(
            broker_port, controller_port, self.log_dir, self.sasl_ssl, ports.get("sasl_ssl")))
        self._format_storage(java, lib)
        bootstrap = f"{_LOOPBACK}:{broker_port}"
        sasl_ssl_bootstrap = (f"{self.sasl_ssl.advertised_host}:{ports['sasl_ssl']}"
                              if self.sasl_ssl is not None else None)
        cmd = self._java_cmd(java, lib, MAIN_CLASS, str(self.properties_file))
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        with self.log_file.open("ab") as log:
            log.write(f"\n--- creditflow: starting Kafka {KAFKA_VERSION} at {started_at} ---\n".encode())
            log.flush()
            # Own session: a Ctrl-C in the terminal that started it does not kill the broker, and
            # it outlives the CLI command that launched it.
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=self.kafka_dir, start_new_session=True)
        self._proc = proc
        self._write_state({"pid": proc.pid, "bootstrap": bootstrap, "log_file": str(self.log_file.resolve()),
                           "started_at": started_at, "controller": f"{_LOOPBACK}:{controller_port}",
                           "sasl_ssl_bootstrap": sasl_ssl_bootstrap, "kafka_version": KAFKA_VERSION})
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = _tail(self.log_file)
                self.state_file.unlink(missing_ok=True)
                if "Address already in use" in tail:
                    raise _PortTaken
                raise KafkaLaunchError(f"Kafka exited with code {proc.returncode} during startup:\n{tail}")
            if metadata_probe(bootstrap, timeout=1.0):
                tmp = self.ports_file.with_suffix(".json.tmp")
                tmp.write_text(json.dumps(dict(ports)) + "\n")
                tmp.replace(self.ports_file)
                return bootstrap
            time.sleep(0.2)
        self.stop()
        raise KafkaLaunchError(f"Kafka did not answer on {bootstrap} in time; last log lines:\n"
                               f"{_tail(self.log_file)}")

    def stop(self, timeout: float = 15) -> bool:
        """Stop the recorded broker; True if a broker process was stopped.

        The state file is removed in every case; a pid that is not our kafka.Kafka is never
        signalled.
        """
        state = self._read_state()
        if state is None:
            self.state_file.unlink(missing_ok=True)
            return False
        pid = int(state["pid"])
        stopped = False
        if self._is_own_child(pid) or is_kafka_process(pid, self.properties_file):
            stopped = True
            self._signal(pid, signal.SIGTERM)
            if not self._wait_gone(pid, timeout):
                self._signal(pid, signal.SIGKILL)
                self._wait_gone(pid, 5)
        self.state_file.unlink(missing_ok=True)
        return stopped

    def _is_own_child(self, pid: int) -> bool:
        """The broker this object launched and has not reaped yet: its pid cannot have been reused.

        Checked first because right after Popen returns the child can still be inside execve, when
        /proc/<pid>/cmdline is empty and the cmdline check would wrongly spare it.
        """
        return self._proc is not None and self._proc.pid == pid and self._proc.poll() is None

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        proc = self._proc if self._proc is not None and self._proc.pid == pid else None
        while time.monotonic() < deadline:
            if proc is not None:
                # Our own child: reap it, or it lingers as a zombie until this process exits.
                if proc.poll() is not None:
                    return True
            elif not _pid_running(pid):
                return True
            time.sleep(0.1)
        return False


class _PortTaken(Exception):
    """The JVM could not bind a port we had probed as free."""


def main(argv: list[str] | None = None) -> int:
    """``python -m deploy.kafka.launcher start|stop|status [data_dir]`` for quick manual use."""
    args = sys.argv[1:] if argv is None else argv
    action = args[0] if args else "status"
    kafka = LocalKafka(Path(args[1]) if len(args) > 1 else Path(".creditflow"))
    try:
        if action == "start":
            print(kafka.start())
        elif action == "stop":
            print("stopped" if kafka.stop() else "not running")
        else:
            print(kafka.status())
    except KafkaLaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
