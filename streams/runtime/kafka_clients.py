"""Every Kafka client the project makes, configured in one place from ``Settings``.

The processor, the sink, the changelog tables, topic administration, the producer API, the CLI and the
faust.App all build their clients here, so security (TLS, SASL/PLAIN, SCRAM), timeouts and group
membership are the same everywhere and a secured cluster needs nothing but settings.

Secrets stay in ``SecretStr`` until the moment a client is built; ``KafkaClients`` prints as its
bootstrap address and security protocol only.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from streams.runtime.membership import static_id

if TYPE_CHECKING:
    from streams.settings import Settings

_SSL_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
_SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})


class KafkaConfigError(ValueError):
    """The Kafka client settings cannot work (missing credentials, unreadable TLS files ...); one line."""


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """The TLS context of every client: the CA bundle (or the system's), an optional client
    certificate, hostname verification as configured; the certificate chain is always verified."""
    cafile = settings.kafka_ssl_cafile
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=_readable(cafile, "KAFKA_SSL_CAFILE"))
    except ssl.SSLError as exc:
        raise KafkaConfigError(f"KAFKA_SSL_CAFILE {cafile} is not a PEM CA certificate: {exc.reason or exc}") from None
    context.check_hostname = settings.kafka_ssl_check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    certfile, keyfile = settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile
    if keyfile is not None and certfile is None:
        raise KafkaConfigError("KAFKA_SSL_KEYFILE is set without KAFKA_SSL_CERTFILE")
    if certfile is not None:
        password = settings.kafka_ssl_key_password
        try:
            context.load_cert_chain(
                _readable(certfile, "KAFKA_SSL_CERTFILE") or "",
                _readable(keyfile, "KAFKA_SSL_KEYFILE"),
                password.get_secret_value() if password is not None else None,
            )
        except ssl.SSLError as exc:
            raise KafkaConfigError(
                f"KAFKA_SSL_CERTFILE/KAFKA_SSL_KEYFILE ({certfile}, {keyfile}) are not a matching PEM "
                f"certificate and key (or KAFKA_SSL_KEY_PASSWORD is wrong): {exc.reason or exc}"
            ) from None
    return context


def _readable(path: Path | None, name: str) -> str | None:
    if path is None:
        return None
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise KafkaConfigError(f"{name} {path} cannot be read: {exc.strerror or exc}") from None
    return str(path)


def security_kwargs(settings: Settings) -> dict[str, Any]:
    """The aiokafka client arguments that pick the protocol, TLS and SASL."""
    protocol = settings.kafka_security_protocol
    out: dict[str, Any] = {"security_protocol": protocol}
    if protocol in _SSL_PROTOCOLS:
        out["ssl_context"] = ssl_context(settings)
    if protocol in _SASL_PROTOCOLS:
        password = settings.kafka_sasl_password
        if not settings.kafka_sasl_username or password is None:
            raise KafkaConfigError(
                f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            )
        out["sasl_mechanism"] = settings.kafka_sasl_mechanism
        out["sasl_plain_username"] = settings.kafka_sasl_username
        out["sasl_plain_password"] = password.get_secret_value()
    return out


class KafkaClients:
    """Makes the project's aiokafka clients for one cluster; ``str()`` is the bootstrap address."""

    def __init__(self, settings: Settings, bootstrap: str | None = None) -> None:
        bootstrap = bootstrap or settings.kafka_bootstrap_servers
        if not bootstrap:
            raise KafkaConfigError("no Kafka bootstrap servers: set KAFKA_BOOTSTRAP_SERVERS")
        self.settings = settings
        self.bootstrap = bootstrap
        self.protocol = settings.kafka_security_protocol
        self._security = security_kwargs(settings)

    def __str__(self) -> str:
        return self.bootstrap

    def __repr__(self) -> str:
        return f"KafkaClients({self.bootstrap!r}, {self.protocol})"

    def common(self) -> dict[str, Any]:
        """Arguments every client takes: where, how, and how patiently to reconnect."""
        return {"bootstrap_servers": self.bootstrap, **self._security}

    def consumer(self, *topics: str, **kwargs: Any) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(*topics, **{**self.common(), **kwargs})

    def producer(self, **kwargs: Any) -> AIOKafkaProducer:
        return AIOKafkaProducer(**{**self.common(), **kwargs})

    def admin(self, **kwargs: Any) -> AIOKafkaAdminClient:
        return AIOKafkaAdminClient(**{**self.common(), **kwargs})

    def group_member(self, role: str) -> dict[str, Any]:
        """Consumer-group arguments of a worker's ``role`` consumer (processor, sink).

        A static member (``streams/runtime/membership.py``: a worker's settled id, or
        ``CREDITFLOW_GROUP_INSTANCE_ID``) takes its partitions back at once after a restart instead of
        waiting for its dead predecessor's session to expire; it leaves the group explicitly on a
        graceful stop (``streams/runtime/leave_group.py``).
        """
        session = self.settings.kafka_session_timeout_ms
        out: dict[str, Any] = {
            "session_timeout_ms": session,
            # The usual third of the session, at most a second: missing heartbeats are noticed soon.
            "heartbeat_interval_ms": min(1_000, session // 3),
        }
        instance = static_id(self.settings)
        if instance:
            out["group_instance_id"] = f"{instance}-{role}"
        return out


def clients_for(target: KafkaClients | str, settings: Settings | None = None) -> KafkaClients:
    """``target`` as ``KafkaClients``: a bare bootstrap address takes its security from ``settings``
    (plaintext when there are none, as in tests against the local broker)."""
    if isinstance(target, KafkaClients):
        return target
    if settings is None:
        from streams.settings import Settings

        settings = Settings(kafka_bootstrap_servers=target)
    return KafkaClients(settings, target)


def faust_broker_settings(settings: Settings, bootstrap: str) -> dict[str, Any]:
    """The faust.App keyword arguments for the same cluster and credentials."""
    import faust

    protocol = settings.kafka_security_protocol
    security = security_kwargs(settings)
    credentials: Any = None
    if protocol in _SASL_PROTOCOLS:
        credentials = faust.SASLCredentials(
            username=security["sasl_plain_username"], password=security["sasl_plain_password"],
            ssl_context=security.get("ssl_context"), mechanism=security["sasl_mechanism"],
        )
    elif protocol == "SSL":
        credentials = faust.SSLCredentials(security["ssl_context"])
    session_s = settings.kafka_session_timeout_ms / 1000
    instance = static_id(settings)
    return {
        "broker": f"kafka://{bootstrap}",
        "broker_credentials": credentials,
        "broker_session_timeout": session_s,
        "broker_heartbeat_interval": min(1.0, session_s / 3),
        # Faust's own consumer group gates the worker's start (the processor and the sink start once that
        # group has joined; measured: with Faust's member dynamic a restarted worker's first commit
        # waits ~10 s, a session timeout): a static member rejoins at once. Faust checks that an
        # assignment kept from before the restart names this worker's URL, so the id names the web
        # port too, and there is none before a port is pinned (streams/runtime/membership.py).
        "consumer_group_instance_id": f"{instance}-faust-{settings.web_port}"
        if instance and settings.web_port else None,
    }


async def describe_failure(exc: BaseException, clients: KafkaClients | str, *, from_kafka: bool = False) -> str:
    """One line for a client that could not start: what is wrong and where, never a secret.

    aiokafka reports every failed bootstrap as "Unable to bootstrap", whatever the cause (refused,
    TLS, SASL); for those the first broker is dialled once more, alone, to name the cause. Other
    errors (a worker's start also opens ClickHouse) keep their own first line unless ``from_kafka``.
    """
    where = str(clients)
    if isinstance(exc, KafkaConnectionError):
        cause = await probe(clients)
        if cause is not None:
            return cause
    return _explain(exc, where, clients, from_kafka)


def _explain(exc: BaseException, where: str, clients: KafkaClients | str, from_kafka: bool) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, KafkaConfigError):
        return text
    if isinstance(exc, (SaslAuthenticationFailed, AuthenticationFailedError)):
        return (f"Kafka at {where} rejected the SASL credentials of user {_username(clients)!r} "
                "(check KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD, KAFKA_SASL_MECHANISM)")
    if isinstance(exc, UnsupportedSaslMechanismError):
        return f"Kafka at {where} does not offer this SASL mechanism (KAFKA_SASL_MECHANISM): {text}"
    if from_kafka or isinstance(exc, KafkaError):
        if isinstance(exc, ssl.SSLError):
            return f"TLS with Kafka at {where} failed (check KAFKA_SSL_*): {_ssl_reason(exc)}"
        if isinstance(exc, KafkaConnectionError | OSError | TimeoutError):
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else text
            if isinstance(exc, KafkaConnectionError) and text.endswith("closed"):
                reason += _hung_up_hint(clients)
            return f"cannot reach Kafka at {where}: {reason}"
        return f"Kafka at {where}: {text}"
    first = str(exc).strip()
    return first.splitlines()[0] if first else type(exc).__name__


async def probe(clients: KafkaClients | str, timeout: float = 10.0) -> str | None:
    """Why the first bootstrap broker cannot be talked to (TCP, TLS, SASL), or None if it can."""
    first = str(clients).split(",")[0].strip()
    host, _, port_text = first.rpartition(":")
    if not host or not port_text.isdigit():
        return f"KAFKA_BOOTSTRAP_SERVERS: {first!r} is not host:port"
    security = clients._security if isinstance(clients, KafkaClients) else {}
    try:
        conn = await asyncio.wait_for(create_conn(host, int(port_text), request_timeout_ms=int(timeout * 1000),
                                                  **security), timeout)
    except Exception as exc:
        return _explain(exc, first, clients, from_kafka=True)
    conn.close()
    return None


def _hung_up_hint(clients: KafkaClients | str) -> str:
    """What to check when a broker closes a connection it just accepted: a TLS listener that wants a
    client certificate ends the handshake that way (TLS 1.3 checks it after the client's side is
    done), and so does a listener spoken to in another protocol."""
    if not isinstance(clients, KafkaClients):
        return ""
    settings = clients.settings
    if settings.kafka_security_protocol in _SSL_PROTOCOLS and settings.kafka_ssl_certfile is None:
        return (" by the broker (if it requires mutual TLS, set KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE; "
                "else check KAFKA_SECURITY_PROTOCOL)")
    return f" by the broker (check that KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol} is its listener's)"


def _ssl_reason(exc: ssl.SSLError) -> str:
    verify = getattr(exc, "verify_message", None)
    return f"certificate verify failed: {verify}" if verify else str(exc.reason or exc)


def _username(clients: KafkaClients | str) -> str | None:
    return clients.settings.kafka_sasl_username if isinstance(clients, KafkaClients) else None
