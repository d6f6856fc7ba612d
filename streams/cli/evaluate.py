"""``creditflow evaluate``: detection quality on labelled traffic, through the real pipeline.

Two kinds of traffic: the fixed scenario set (``--set``), or randomised patterns (``--seeds``, see
``streams.synthetic.patterns``; tune on its training seeds, report on its test seeds). By default the
traffic is produced to Kafka (own topic prefix and app id, so nothing mixes with other runs),
metered and watched by the processor in this process, and the alerts are read back from
``gaming-alerts``. ``--offline`` runs the processor's own meter and detection in this process with
no broker (``streams.synthetic.in_process``). Exit 0 only when the targets hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
from collections import defaultdict
from typing import Any

import click

from streams.runtime.kafka_clients import KafkaClients, clients_for
from streams.runtime.topics import (
    CREDIT_GRANTS,
    DETECTOR_FINGERPRINTS,
    GAMING_ALERTS,
    INTERACTION_EVENTS,
    USAGE_ENRICHED,
    group_lag,
)
from streams.synthetic.evaluation import EvaluationResult, PatternsResult, score
from streams.synthetic.in_process import latest_alerts
from streams.synthetic.scenarios import ScenarioSet

PRECISION_TARGET = 0.95
RECALL_TARGET = 0.90
PATTERN_RECALL_TARGET = 0.80
EARLY_TARGET = 0.80  # share of gamers alerted before 20% of their eventual credits were spent


def _overall_failures(precision: float, recall: float) -> list[str]:
    """The overall precision and recall targets, shared by the scenario set and the patterns."""
    failed = []
    if precision < PRECISION_TARGET:
        failed.append(f"precision {precision:.3f} < {PRECISION_TARGET}")
    if recall < RECALL_TARGET:
        failed.append(f"recall {recall:.3f} < {RECALL_TARGET}")
    return failed


def targets_met(result: EvaluationResult) -> list[str]:
    """The targets that failed (empty = all hold)."""
    failed = _overall_failures(result.precision, result.recall)
    if result.decoy_flagged_high:
        failed.append("a decoy was flagged at HIGH or above")
    missed = sorted(rule for rule, ok in result.detectors_catch_own.items() if not ok)
    if missed:
        failed.append(f"detectors missed their own scenario: {', '.join(missed)}")
    return failed


def pattern_targets_met(result: PatternsResult) -> list[str]:
    """The randomised-pattern targets that failed (empty = all hold)."""
    failed = _overall_failures(result.precision, result.recall)
    low = [f"{s.pattern} {s.recall:.2f}" for s in result.patterns if s.recall < PATTERN_RECALL_TARGET]
    if low:
        failed.append(f"pattern recall < {PATTERN_RECALL_TARGET}: {', '.join(low)}")
    if result.decoy_high:
        failed.append(f"{result.decoy_high} decoy(s) flagged at HIGH or above")
    if result.early_share < EARLY_TARGET:
        failed.append(f"alerted before 20% of credits {result.early_share:.3f} < {EARLY_TARGET}")
    return failed


def parse_seeds(text: str) -> list[int]:
    """``101,102`` or ``101-105`` or ``test`` / ``training`` (the generator's two disjoint sets)."""
    from streams.synthetic.patterns import TEST_SEEDS, TRAINING_SEEDS

    named = {"test": TEST_SEEDS, "training": TRAINING_SEEDS}
    if text in named:
        return list(named[text])
    seeds: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise click.BadParameter(f"{part.strip()!r} is not a seed, a range like 101-105, 'test' or 'training'")
        seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    return seeds


async def read_topic(bootstrap: KafkaClients | str, topic: str, schema: str) -> list[dict[str, Any]]:
    """Every record of ``topic`` from the beginning to its current end, decoded."""
    from aiokafka import TopicPartition

    from streams.wire.codec import Decoder

    decoder = Decoder(schema)
    consumer = clients_for(bootstrap).consumer(enable_auto_commit=False, group_id=None,
                                               auto_offset_reset="earliest")
    out: list[dict[str, Any]] = []
    try:
        await consumer.start()
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=1000)
            for records in batch.values():
                out.extend(decoder.decode(r.value) for r in records if r.value is not None)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return out


async def _run_pipeline(settings: Any, bootstrap: str, scenarios: ScenarioSet, timeout: float,
                        say: Any) -> tuple[list[dict[str, Any]], list[Any], dict[str, list[tuple[int, int]]], int]:
    from streams.processor import Processor
    from streams.producer import CreditflowProducer
    from streams.runtime.pipeline import build

    app = build(settings, bootstrap).app
    kafka = KafkaClients(settings, bootstrap)
    processor: Processor = app.creditflow_processor  # type: ignore[attr-defined]
    detection = processor.detection
    detection.record_firings = []
    await app.start()
    try:
        async with CreditflowProducer(settings, bootstrap_servers=bootstrap) as producer:
            for g in scenarios.grants:
                await producer.emit_grant(g)
            await producer.flush()
            say(f"produced {len(scenarios.grants)} grants; waiting for the processor to apply them")
            deadline = time.monotonic() + timeout
            # Grants first, as a platform would issue them before use: debits are then deterministic.
            while await group_lag(kafka, f"{settings.app_id}-processor", [settings.topic(CREDIT_GRANTS)]):
                if time.monotonic() > deadline:
                    raise click.ClickException("the processor did not apply the grants in time")
                await asyncio.sleep(0.5)
            for i, ev in enumerate(scenarios.events, 1):
                await producer.emit_interaction(ev)
                if i % 2000 == 0:
                    await asyncio.sleep(0)
            await producer.flush()
        say(f"produced {len(scenarios.events)} events; waiting for the processor to consume them")
        topics = [settings.topic(t) for t in (INTERACTION_EVENTS, CREDIT_GRANTS, DETECTOR_FINGERPRINTS)]
        clean = 0
        while clean < 2:
            if time.monotonic() > deadline:
                raise click.ClickException(f"the pipeline did not drain within {timeout:.0f}s")
            clean = clean + 1 if await group_lag(kafka, processor.group, topics) == 0 else 0
            await asyncio.sleep(0.5)
        # Quiet entities' last findings: what the timer would emit within a flush interval.
        async with processor.lock:
            await processor.flush(force=True)
        emitted = await read_topic(kafka, settings.topic(GAMING_ALERTS), "GamingAlert")
        usage: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for rec in await read_topic(kafka, settings.topic(USAGE_ENRICHED), "UsageEnriched"):
            usage[rec["account_id"]].append((rec["occurred_at"], rec["charged_micro"]))
        for v in usage.values():
            v.sort()
        return latest_alerts(emitted), list(detection.record_firings), usage, len(emitted)
    finally:
        with contextlib.suppress(Exception):
            await app.stop()


def run_evaluation(size: str, seed: int, offline: bool, timeout: float) -> int:
    from rich.console import Console

    from streams.synthetic.evaluation import evaluate_offline, render_table
    from streams.synthetic.scenarios import SCENARIO_RULE, build

    # The table is wide; a pipe or a log file should get all of it, not a squeezed 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 200)
    started = time.monotonic()
    scenarios = build(size, seed=seed)
    console.print(f"scenario set '{size}' (seed {seed}): {len(scenarios.events)} events, "
                  f"{len(scenarios.grants)} grants, {len(scenarios.labels)} labelled accounts")
    emissions = None
    if offline:
        result = evaluate_offline(scenarios)
    else:
        alerts, firings, usage, emissions = _pipeline(scenarios, timeout, console)
        result = score(scenarios.labels, alerts, firings=firings, usage=usage, scenario_rules=SCENARIO_RULE)
    console.print(render_table(result))
    mode = ("in process (the processor's meter and detection, no broker)" if offline
            else f"real pipeline, {emissions} alert emissions on the topic")
    console.print(f"{mode}; {time.monotonic() - started:.1f}s")
    return _verdict(console, targets_met(result), "precision >= 0.95, recall >= 0.90, no decoy at HIGH+, "
                    "every detector caught its own scenario")


def run_pattern_evaluation(seeds: list[int], offline: bool, timeout: float) -> int:
    from rich.console import Console

    from streams.credits.policy import load_policy
    from streams.synthetic.evaluation import merge_patterns, render_patterns, score_patterns
    from streams.synthetic.in_process import run_in_process
    from streams.synthetic.patterns import PATTERNS, build_randomised

    console = Console(width=None if sys.stdout.isatty() else 220)
    started = time.monotonic()
    rules = {name: rule for name, (rule, _gamer, _decoy) in PATTERNS.items()}
    priced = set(load_policy().prices)
    results = []
    for seed in seeds:
        scenarios = build_randomised(seed)
        if offline:
            run = run_in_process(scenarios)
            alerts, usage, unknown = run.latest, run.usage, run.unknown_model_events
        else:
            alerts, _firings, usage, _emitted = _pipeline(scenarios, timeout, console)
            unknown = sum(1 for ev in scenarios.events if ev["model"] not in priced)
        result = score_patterns(scenarios.labels, alerts, usage, rules, unknown_model_events=unknown)
        results.append(result)
        console.print(f"seed {seed}: {len(scenarios.events)} events, {len(scenarios.labels)} accounts, "
                      f"precision {result.precision:.3f}, recall {result.recall:.3f}, "
                      f"early {result.early_share:.3f}")
    merged = merge_patterns(results)
    mode = "in process (the processor's meter and detection, no broker)" if offline else "real pipeline"
    console.print(render_patterns(merged, f"Detection on randomised patterns, seeds {','.join(map(str, seeds))}"))
    console.print(f"{mode}; {time.monotonic() - started:.1f}s")
    return _verdict(console, pattern_targets_met(merged), "precision >= 0.95, recall >= 0.90 overall and >= 0.80 "
                    "per pattern, no decoy at HIGH+, >= 80% of gamers alerted before 20% of their credits")


def _verdict(console: Any, failed: list[str], targets: str) -> int:
    """Print whether the quality targets held; the exit status says the same."""
    if failed:
        console.print("[red]targets not met:[/red] " + "; ".join(failed))
        return 1
    console.print(f"[green]targets met[/green] ({targets})")
    return 0


def _pipeline(scenarios: ScenarioSet, timeout: float, console: Any
              ) -> tuple[list[dict[str, Any]], list[Any], dict[str, list[tuple[int, int]]], int]:
    from streams.runtime.pipeline import prepare
    from streams.settings import Role, Settings

    run_id = secrets.token_hex(3)
    base = Settings()
    # Own topics and groups per run; processor role only: alerts are read from the topic, so this
    # neither needs nor holds the ClickHouse path a running sink may own.
    settings = base.model_copy(update={
        "role": Role.PROCESSOR,
        "topic_prefix": f"eval-{run_id}.",
        "app_id": f"{base.app_id}-eval-{run_id}",
        "process_batch": 1000,
    })
    broker = None
    try:
        bootstrap, broker = prepare(settings)
        if broker is not None and getattr(broker, "reused", False):
            broker = None  # not ours to stop
        console.print(f"kafka {bootstrap}; topics eval-{run_id}.*")
        return asyncio.run(_run_pipeline(settings, bootstrap, scenarios, timeout, console.print))
    finally:
        if broker is not None:
            broker.stop()


@click.command()
@click.option("--set", "size", type=click.Choice(["small", "default"]), default="default", show_default=True,
              help="which labelled scenario set")
@click.option("--seed", type=int, default=11, show_default=True)
@click.option("--seeds", default=None, metavar="SEEDS",
              help="randomised patterns instead of the fixed set: seeds like 101,102 or 101-105, or "
                   "'training' / 'test' (the generator's disjoint seed sets)")
@click.option("--offline", is_flag=True,
              help="run the processor's meter and detection in this process instead of through Kafka")
@click.option("--timeout", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="seconds to wait for the pipeline to consume the set")
def evaluate(size: str, seed: int, seeds: str | None, offline: bool, timeout: float) -> None:
    """Score the detectors on labelled traffic; exit 0 only if the quality targets hold."""
    try:
        if seeds is not None:
            code = run_pattern_evaluation(parse_seeds(seeds), offline, timeout)
        else:
            code = run_evaluation(size, seed, offline, timeout)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        code = 130
    sys.exit(code)
