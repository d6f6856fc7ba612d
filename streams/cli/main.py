"""The ``creditflow`` command line: the Faust worker plus the project's own commands.

Errors a user can cause (bad arguments, unreachable services, invalid files) print one line and
exit non-zero; tracebacks are for bugs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

import click
from pydantic import ValidationError

from streams.settings import Role, Settings


class _Group(click.Group):
    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("standalone_mode", True)
        try:
            return super().main(*args, **{**kwargs, "standalone_mode": False})
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        except click.UsageError as exc:
            # One line, not click's three: the usage is one `--help` away.
            where = exc.ctx.command_path if exc.ctx else "creditflow"
            click.echo(f"error: {exc.format_message()} (see '{where} --help')", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except ValidationError as exc:
            # A bad environment variable: name it, one line.
            first = exc.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else "?"
            click.echo(f"error: invalid configuration {_env_name(field)}: {first['msg']}", err=True)
            sys.exit(2)
        except Exception as exc:
            line = _kafka_failure(exc)
            if line is None:
                raise
            click.echo(f"error: {line}", err=True)
            sys.exit(1)


def _kafka_failure(exc: BaseException) -> str | None:
    """One line for a Kafka failure a command left to the group (wrong credentials, TLS, an
    unreachable broker ...), as the worker says it; None for anything else (a bug: its traceback)."""
    from aiokafka.errors import KafkaError

    from streams.runtime.kafka_clients import KafkaConfigError, describe_failure

    if not isinstance(exc, KafkaError | KafkaConfigError):
        return None
    settings = Settings()
    where = settings.kafka_bootstrap_servers
    if not where:
        return f"the local Kafka broker: {' '.join(str(exc).split()) or type(exc).__name__}"
    return asyncio.run(describe_failure(exc, _kafka_or(settings, where), from_kafka=True))


def _env_name(field: str) -> str:
    """The variable to set: an error names a field by its alias when it has one (KAFKA_SASL_MECHANISM)."""
    aliases = {info.validation_alias for info in Settings.model_fields.values()
               if isinstance(info.validation_alias, str)}
    if field in aliases:
        return field
    info = Settings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, str):
        return info.validation_alias
    return f"CREDITFLOW_{field.upper()}"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="creditflow")
def cli() -> None:
    """creditflow: meter promotional compute credits from Kafka into ClickHouse."""


def _settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@cli.command()
@click.option("--role", type=click.Choice([r.value for r in Role]), default=None,
              help="which roles to run (default: CREDITFLOW_ROLE or all)")
@click.option("--loglevel", "-l", default=None, help="log level (default: CREDITFLOW_LOG_LEVEL)")
def worker(role: str | None, loglevel: str | None) -> None:
    """Run a pipeline worker (processor, sink, or both) until interrupted."""
    import faust

    from streams.runtime.kafka_clients import describe_failure
    from streams.runtime.kafka_log_limits import quiet_while_connecting
    from streams.runtime.pipeline import build, prepare
    from streams.runtime.web import check_bindable, url_for

    settings = _settings(role=role, log_level=loglevel)
    try:
        # Before anything connects: a fixed port (0 picks a free one) taken by another process.
        check_bindable(settings.web_host, settings.web_port)
    except OSError as exc:
        raise click.ClickException(f"CREDITFLOW_WEB_HOST/CREDITFLOW_WEB_PORT {settings.web_host}:{settings.web_port} "
                                   f"cannot be listened on: {exc.strerror or exc}") from None
    try:
        # ClickHouse's HTTP client logs its retries too; the error below says what failed.
        with quiet_while_connecting("urllib3", "clickhouse_connect"):
            bootstrap, broker = prepare(settings)
        pipeline = build(settings, bootstrap, broker)
    except Exception as exc:
        # A broken configuration (credentials, TLS files, an unreachable broker) is one line, not a trace.
        where = _kafka_or(settings, settings.kafka_bootstrap_servers) if settings.kafka_bootstrap_servers \
            else "the local broker"
        raise click.ClickException(asyncio.run(describe_failure(exc, where))) from None
    click.echo(f"creditflow worker: role={settings.role.value} kafka={bootstrap} "
               f"({settings.kafka_security_protocol}) clickhouse={_redact(settings.resolved_clickhouse_url)} "
               f"http={url_for(settings.web_host, pipeline.app.conf.web_port)}", err=True)
    faust.Worker(pipeline.app, loglevel=settings.log_level.lower(), quiet=True).execute_from_commandline()


def _kafka_or(settings: Settings, where: str) -> Any:
    """The clients ``describe_failure`` probes with, or the bare address when they cannot be made."""
    from streams.runtime.kafka_clients import KafkaClients

    try:
        return KafkaClients(settings, where)
    except ValueError:
        return where


def _redact(url: str) -> str:
    from sinks.client import _redact as redact

    return redact(url)


@cli.command()
@click.option("--events", "-n", type=click.IntRange(min=1), default=20_000, show_default=True,
              help="interaction events to produce")
@click.option("--accounts", type=click.IntRange(min=1), default=2_000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="seconds to wait for every event to land")
@click.option("--serve", is_flag=True, help="after the summary, keep the worker and its live SQL up until Ctrl-C")
def demo(events: int, accounts: int, seed: int, timeout: float, serve: bool) -> None:
    """Start everything, produce N events with planted gaming, wait until all are in ClickHouse,
    print a summary with the alerts."""
    from streams.synthetic.demo import run_demo

    code = run_demo(_settings(), events=events, accounts=accounts, seed=seed, timeout=timeout, serve=serve)
    sys.exit(code)


def _register() -> None:
    import importlib

    # Each command group lives in its own module of this package; the group only collects them.
    commands = {
        "kafka": ["kafka"], "schemas": ["schemas"], "policy": ["policy"],
        "produce": ["produce"], "migrate": ["migrate"], "query": ["query", "report"],
        "alerts": ["alerts"], "evaluate": ["evaluate"], "balance": ["balance"],
        "dead_letters": ["dead_letters"],
    }
    for module_name, names in commands.items():
        try:
            module = importlib.import_module(f"streams.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"streams.cli.{module_name}":
                raise
            continue
        for name in names:
            command = getattr(module, name, None)
            if isinstance(command, click.Command):
                cli.add_command(command, name.replace("_", "-"))  # dead_letters -> dead-letters


_CLIENT_LOGGERS = ("aiokafka", "urllib3", "clickhouse_connect")


def _client_chatter(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.CRITICAL or not record.name.startswith(_CLIENT_LOGGERS)


def main() -> None:
    level = os.environ.get("CREDITFLOW_LOG_LEVEL", "").upper() or "WARNING"
    # An unknown level is reported by the settings, in one line, once a command reads them.
    logging.basicConfig(level=level if isinstance(logging.getLevelName(level), int) else "WARNING",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Per-batch timings of the processor, without Faust's own debug flood.
    if os.environ.get("CREDITFLOW_TRACE_BATCHES"):
        logging.getLogger("creditflow").setLevel(logging.DEBUG)
    if sys.argv[1:2] not in (["worker"], ["demo"]) and logging.getLogger().level >= logging.WARNING:
        # A command reports a failure itself, in one line; the clients' own error and retry lines for
        # it (aiokafka's at each reconnect) would only repeat it. Workers keep them, rate-limited. A
        # handler filter, since clickhouse_connect sets urllib3's level when it is imported.
        for handler in logging.getLogger().handlers:
            handler.addFilter(_client_chatter)
    _register()
    cli()


if __name__ == "__main__":
    main()
