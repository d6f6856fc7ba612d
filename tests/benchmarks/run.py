"""``python -m tests.benchmarks.run [--quick] [--events N] [--runs K] [--out DIR]`` (``make bench``).

Starts its own Kafka broker (KRaft, temp dir; stopped at the end whatever happens), pre-produces the
workload once, then measures every figure as the median of K runs, each run a fresh process with a
fresh consumer group, fresh output topics and a fresh chDB path:

    processor role alone   input topic -> usage-enriched          (end: last record in the topic)
    sink role alone        usage-enriched of processor run 1 -> ClickHouse (end: last row stored)
    all roles, 1 process   input topic -> ClickHouse
    latency                all roles, fed at 50% of the all-roles throughput, occurred_at = send time
    scaling                2 processor processes in one consumer group
    1M accounts            processor peak RSS with one event per distinct account (+ their grants)
    peers                  hand-written loop; ClickHouse Kafka engine + SQL view
    profile                processor role under pyinstrument, and per-step micro-timings (only when
                           asked for with --stages: it is ~35 s of a budget of 30 minutes)

Prints a table, writes ``bench.json`` (every figure + environment) and ``bench.png`` to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from tests.benchmarks import report
from tests.benchmarks.common import OffsetWatcher
from tests.benchmarks.machine_probe import MachineSpeed
from tests.benchmarks.workload import (
    PARTITIONS,
    Workload,
    create_topics,
    latency_events,
    produce_grants,
    produce_paced,
    produce_workload,
)

MIB = 1024 * 1024


STAGES = ("processor", "sink", "all", "latency", "scaling", "accounts", "handwritten", "clickhouse_kafka", "profile")
# The profile explains figures rather than being one; a full run without it keeps more of its 30-minute
# budget for the host's slow spells.
DEFAULT_STAGES = frozenset(STAGES) - {"profile"}


@dataclass
class Options:
    quick: bool = False
    events: int = 1_000_000
    runs: int = 3
    out: Path = Path("bench-results")
    accounts: int = 20_000
    seed: int = 11
    latency_seconds: float = 20.0
    latency_rate: int | None = None
    # Leading seconds of each latency run left out of its headline figures (see worker._latency).
    latency_warmup_s: float = 5.0
    rss_accounts: int = 1_000_000
    profile_events: int = 50_000
    bootstrap: str | None = None
    stages: frozenset[str] = DEFAULT_STAGES
    run_timeout: float = 900.0


@dataclass
class ProcResult:
    result: dict[str, Any]
    ready_at: float | None
    log: Path


@dataclass
class Bench:
    opts: Options
    console: Console
    tmp: Path
    bootstrap: str = ""
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    progress: Progress | None = None

    # -- subprocesses ------------------------------------------------------------------------------
    async def spawn(self, module: str, cfg: dict[str, Any], name: str) -> tuple[asyncio.subprocess.Process, Path]:
        log = self.opts.out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", module, json.dumps(cfg), stdout=asyncio.subprocess.PIPE, stderr=err,
                cwd=str(report.REPO), start_new_session=True, limit=64 * MIB)
        self.procs.append(proc)
        return proc, log

    async def follow(self, proc: asyncio.subprocess.Process, log: Path, task: TaskID | None,
                     ready: asyncio.Event | None = None) -> ProcResult:
        """Read a subprocess' protocol lines until it exits; its RESULT is returned."""
        assert proc.stdout is not None
        result: dict[str, Any] = {}
        ready_at = None
        try:
            async for raw in proc.stdout:
                line = raw.decode(errors="replace").strip()
                if line == "READY":
                    ready_at = time.time()
                    if ready is not None:
                        ready.set()
                elif line.startswith("PROGRESS ") and task is not None and self.progress is not None:
                    self.progress.update(task, completed=int(line.split()[1]))
                elif line.startswith("RESULT "):
                    result = json.loads(line[len("RESULT "):])
            await proc.wait()
        finally:
            if proc in self.procs and proc.returncode is not None:
                self.procs.remove(proc)
        if not result:
            result = {"error": f"exited {proc.returncode} without a result; see {log}"}
        if "error" in result:
            result.setdefault("log", str(log))
        return ProcResult(result, ready_at, log)

    async def run_one(self, module: str, cfg: dict[str, Any], name: str, total: int) -> ProcResult:
        proc, log = await self.spawn(module, cfg, name)
        task = self.task(name, total)
        try:
            res = await asyncio.wait_for(self.follow(proc, log, task), self.opts.run_timeout)
        except TimeoutError:
            await self.kill(proc)
            res = ProcResult({"error": f"timed out after {self.opts.run_timeout:.0f}s; see {log}"}, None, log)
        self.finish(task)
        return res

    async def kill(self, proc: asyncio.subprocess.Process, grace: float = 20.0) -> None:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def task(self, name: str, total: int) -> TaskID | None:
        return self.progress.add_task(name, total=total) if self.progress is not None else None

    def finish(self, task: TaskID | None) -> None:
        if self.progress is not None and task is not None:
            self.progress.update(task, visible=False)

    def ran(self, name: str, started: float, res: dict[str, Any]) -> dict[str, Any]:
        """Print the run's line (``report.run_line``) and return its figures."""
        self.console.print(report.run_line(name, res, time.monotonic() - started), markup=False, highlight=False)
        return res

    # -- stages ------------------------------------------------------------------------------------
    def _worker_cfg(self, mode: str, input_prefix: str, output_prefix: str, expected: int,
                    **extra: Any) -> dict[str, Any]:
        run = secrets.token_hex(3)
        return {"mode": mode, "bootstrap": self.bootstrap, "input_prefix": input_prefix,
                "output_prefix": output_prefix, "app_id": f"bench-{mode}-{run}",
                "data_dir": str(self.tmp / f"{mode}-{run}"), "expected": expected, "partitions": PARTITIONS,
                **extra}

    async def processor_run(self, wl: Workload, name: str, workers: int = 1, target: int | None = None,
                            **extra: Any) -> dict[str, Any]:
        """Processor workers until ``target`` records are in a fresh usage-enriched topic."""
        started = time.monotonic()
        target = target or wl.events
        out_prefix = f"{wl.prefix}out-{secrets.token_hex(3)}."
        await create_topics(self.bootstrap, out_prefix)
        cfg = self._worker_cfg("processor", wl.prefix, out_prefix, 0, **extra)
        task = self.task(name, target)
        ready_events = [asyncio.Event() for _ in range(workers)]
        spawned = [await self.spawn("tests.benchmarks.worker", cfg, f"{name}-w{i}") for i in range(workers)]
        followers = [asyncio.create_task(self.follow(p, log, None, ready_events[i]))
                     for i, (p, log) in enumerate(spawned)]
        out_topic = f"{out_prefix}usage-enriched"
        end_at = None
        window_start: tuple[float, int] | None = None
        try:
            async with OffsetWatcher(self.bootstrap, out_topic, PARTITIONS) as watch:
                deadline = time.monotonic() + self.opts.run_timeout
                while time.monotonic() < deadline:
                    if any(f.done() for f in followers):
                        break  # a worker died; its result says why
                    total = await watch.total()
                    if window_start is None and all(e.is_set() for e in ready_events):
                        # Every worker holds partitions: from here on all of them are working.
                        window_start = (time.time(), total)
                    if self.progress is not None and task is not None:
                        self.progress.update(task, completed=total)
                    if total >= target:
                        end_at = time.time()
                        break
                    await asyncio.sleep(0.05)
        finally:
            for p, _ in spawned:
                if p.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.send_signal(signal.SIGTERM)
            # asyncio.wait (unlike wait_for) leaves the followers running on timeout: their
            # results are still wanted once the stragglers are killed.
            done, _ = await asyncio.wait(followers, timeout=90)
            if len(done) < len(followers):
                for p, _ in spawned:
                    await self.kill(p, grace=1)
                await asyncio.wait(followers, timeout=10)
            results = [f.result() if f.done() and not f.cancelled() and f.exception() is None
                       else ProcResult({"error": "worker did not stop after SIGTERM"}, None, Path())
                       for f in followers]
            self.finish(task)
        errors = [r.result["error"] for r in results if "error" in r.result]
        if errors or end_at is None:
            return self.ran(name, started, {"error": "; ".join(errors) or f"output did not reach {target} records "
                                            "in time", "output_prefix": out_prefix})
        first = min(r.result["first_consume_at"] for r in results if r.result.get("first_consume_at"))
        cpu = sum(r.result.get("cpu_drain_s") or 0.0 for r in results)
        out: dict[str, Any] = {
            "output_prefix": out_prefix, "events": target, "workers": workers,
            "seconds": end_at - first, "eps": target / (end_at - first),
            "cpu_drain_s": cpu, "cpu_per_million": cpu / target * 1e6,
            "peak_rss_mib": max(r.result["peak_rss_bytes"] for r in results) / MIB,
            "workers_results": [r.result for r in results],
        }
        if window_start is not None and end_at > window_start[0] and target > window_start[1]:
            # Steady state with every worker assigned (what the scaling figure compares).
            out["eps_all_assigned"] = (target - window_start[1]) / (end_at - window_start[0])
            out["done_before_all_assigned"] = window_start[1]
        return self.ran(name, started, out)

    async def role_run(self, mode: str, input_prefix: str, output_prefix: str, expected: int,
                       name: str) -> dict[str, Any]:
        started = time.monotonic()
        cfg = self._worker_cfg(mode, input_prefix, output_prefix, expected)
        res = (await self.run_one("tests.benchmarks.worker", cfg, name, expected)).result
        return self.ran(name, started, _drain_figures(res, expected))

    async def peer_run(self, module: str, cfg: dict[str, Any], name: str, expected: int) -> dict[str, Any]:
        started = time.monotonic()
        res = (await self.run_one(module, cfg, name, expected)).result
        return self.ran(name, started, _drain_figures(res, expected))

    async def latency_run(self, rate: float, name: str) -> dict[str, Any]:
        started = time.monotonic()
        prefix = f"bench-lat-{secrets.token_hex(3)}."
        n = max(200, int(rate * self.opts.latency_seconds))
        await create_topics(self.bootstrap, prefix)
        await produce_grants(self.bootstrap, prefix, accounts=self.opts.accounts, seed=self.opts.seed + 1)
        events = latency_events(n, accounts=self.opts.accounts, seed=self.opts.seed + 1, prefix=prefix)
        cfg = self._worker_cfg("latency", prefix, prefix, n, warmup_s=self.opts.latency_warmup_s)
        proc, log = await self.spawn("tests.benchmarks.worker", cfg, name)
        ready = asyncio.Event()
        task = self.task(f"{name} landed", n)
        follower = asyncio.create_task(self.follow(proc, log, task, ready))
        ready_wait = asyncio.create_task(ready.wait())
        try:
            await asyncio.wait({follower, ready_wait}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
            ready_wait.cancel()
            if not ready.is_set():
                await self.kill(proc)
                raise RuntimeError((await follower).result.get("error", "worker never became ready"))
            achieved = await produce_paced(self.bootstrap, f"{prefix}interaction-events", events, rate,
                                           self.progress)
            res = (await asyncio.wait_for(follower, self.opts.run_timeout)).result
        except Exception as exc:
            await self.kill(proc)
            return self.ran(name, started, {"error": f"{type(exc).__name__}: {exc}"})
        finally:
            self.finish(task)
        if "error" in res:
            return self.ran(name, started, {"error": res["error"]})
        lat = res["latency"]
        return self.ran(name, started, {"rate": rate, "achieved_rate": achieved, "events": n, **lat,
                                        "peak_rss_mib": res["peak_rss_bytes"] / MIB})


def _workload_line(wl: Workload) -> str:
    return (f"workload: {wl.events:,} events and {wl.grants:,} grants over {wl.accounts:,} accounts produced in "
            f"{wl.produce_seconds:,.0f} s")


def _drain_figures(res: dict[str, Any], expected: int) -> dict[str, Any]:
    if "error" in res:
        return {"error": res["error"]}
    seconds = res["end_at"] - res["first_consume_at"]
    out = {"events": expected, "rows": res.get("events_rows"), "seconds": seconds, "eps": expected / seconds,
           "cpu_drain_s": res.get("cpu_drain_s"),
           "cpu_per_million": (res.get("cpu_drain_s") or 0.0) / expected * 1e6,
           "peak_rss_mib": res["peak_rss_bytes"] / MIB}
    for k in ("clickhouse_version", "create_note", "sample", "sink_rows", "sink_batches", "dead"):
        if k in res:
            out[k] = res[k]
    if res.get("events_rows") is not None and res["events_rows"] != expected:
        out["warning"] = f"{res['events_rows']} rows in events, expected {expected}"
    return out


def _aggregate(runs: Sequence[dict[str, Any]], keys: Sequence[str] = ("eps", "cpu_per_million",
                                                                      "peak_rss_mib")) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    agg: dict[str, Any] = {"runs": list(runs)}
    if not ok:
        agg["unavailable"] = "; ".join(r["error"] for r in runs)[:500] or "no runs"
        return agg
    for k in keys:
        agg[k] = report.summary([r[k] for r in ok if r.get(k) is not None])
    return agg


def verify_sql_pricing(sample_rows: list[list[Any]], events: list[dict[str, Any]]) -> dict[str, Any]:
    """Every sampled row the SQL view wrote must equal what streams.credits.policy computes."""
    from streams.credits.policy import load_policy, price_event

    policy = load_policy()
    by_id = {e["event_id"]: e for e in events}
    mismatches = []
    for eid, cat, ext, reason, tools, mult, prio, lm, cm, sm in sample_rows:
        e = by_id.get(eid)
        if e is None:
            continue
        price = policy.price_for(e["model"])
        assert price is not None
        cls, pr = price_event(policy, price, e)
        want = (cls.category, cls.is_extended_context, cls.is_complex_reasoning, cls.is_tool_use,
                policy.multiplier_text[cls.category], policy.priority[cls.category], pr.list_micro,
                pr.charged_micro, pr.subsidy_micro)
        got = (cat, bool(ext), bool(reason), bool(tools), mult, prio, lm, cm, sm)
        if want != got:
            mismatches.append({"event_id": eid, "python": want, "sql": got})
    return {"checked": len(sample_rows), "mismatches": len(mismatches), "examples": mismatches[:5]}


async def _main(opts: Options, console: Console) -> dict[str, Any]:
    from deploy.kafka.launcher import LocalKafka

    # SIGTERM (e.g. `timeout`, CI cancel) cancels the run like Ctrl-C does, so the finally below
    # still stops the broker and every measured process (they run in their own sessions).
    main_task = asyncio.current_task()
    if main_task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    opts.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="creditflow-bench-"))
    bench = Bench(opts, console, tmp)
    broker: LocalKafka | None = None
    started = time.monotonic()
    figures: dict[str, Any] = {}
    results: dict[str, Any] = {"events": opts.events, "runs": opts.runs, "quick": opts.quick,
                               "command": " ".join(["python -m tests.benchmarks.run", *sys.argv[1:]]),
                               "figures": figures, "notes": bench.notes}
    progress = Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=False)
    bench.progress = progress
    speed = MachineSpeed()
    speed.take("start")
    try:
        if opts.bootstrap:
            bench.bootstrap = opts.bootstrap
        else:
            console.print("starting Kafka (KRaft) in a temp dir ...")
            broker = LocalKafka(tmp / "kafka-data")
            bench.bootstrap = broker.start(timeout=120)
        results["bootstrap"] = bench.bootstrap
        stages = opts.stages
        with progress:
            prefix = f"bench-{secrets.token_hex(3)}."
            json_topic = f"{prefix}json.interaction-events" if "clickhouse_kafka" in stages else None
            wl = await produce_workload(bench.bootstrap, prefix, opts.events, accounts=opts.accounts,
                                        seed=opts.seed, json_topic=json_topic, progress=progress,
                                        sample_every=max(1, opts.events // 2000), head=min(opts.events, 20_000))
            console.print(_workload_line(wl), highlight=False)
            results["workload"] = {"events": wl.events, "grants": wl.grants, "accounts": wl.accounts,
                                   "produce_seconds": wl.produce_seconds, "input_topic": wl.topic("interaction-events"),
                                   "json_topic": json_topic}
            runs = range(1, opts.runs + 1)

            proc_runs: list[dict[str, Any]] = []
            if stages & {"processor", "sink"}:
                for i in runs:
                    proc_runs.append(await bench.processor_run(wl, f"processor run {i}"))
                figures["processor"] = _aggregate(proc_runs)
                speed.take("processor")
            if "sink" in stages:
                src = next((r for r in proc_runs if "error" not in r), None)
                sink_runs = []
                for i in runs:
                    if src is None:
                        sink_runs.append({"error": "no processor output to sink"})
                        continue
                    sink_runs.append(await bench.role_run("sink", wl.prefix, src["output_prefix"], wl.events,
                                                          f"sink run {i}"))
                figures["sink"] = _aggregate(sink_runs)
                speed.take("sink")
            if "all" in stages or ("latency" in stages and not opts.latency_rate):
                all_runs = []
                for i in runs:
                    out_prefix = f"{wl.prefix}all-{secrets.token_hex(3)}."
                    await create_topics(bench.bootstrap, out_prefix)
                    all_runs.append(await bench.role_run("all", wl.prefix, out_prefix, wl.events,
                                                         f"all roles run {i}"))
                figures["all"] = _aggregate(all_runs)
                speed.take("all")
            if "handwritten" in stages:
                hw = []
                for i in runs:
                    cfg = {"bootstrap": bench.bootstrap, "input_prefix": wl.prefix,
                           "data_dir": str(tmp / f"hw-{i}"), "group": f"bench-hw-{secrets.token_hex(3)}",
                           "expected": wl.events}
                    hw.append(await bench.peer_run("tests.benchmarks.peer_handwritten", cfg,
                                                   f"hand-written run {i}", wl.events))
                figures["handwritten"] = _aggregate(hw)
                speed.take("handwritten")
            if "clickhouse_kafka" in stages and json_topic:
                ck = []
                ids = [e["event_id"] for e in wl.sample]
                for i in runs:
                    cfg = {"bootstrap": bench.bootstrap, "json_topic": json_topic, "data_dir": str(tmp / f"ck-{i}"),
                           "group": f"bench-ck-{secrets.token_hex(3)}", "expected": wl.events,
                           "sample_ids": ids, "num_consumers": 2, "timeout": opts.run_timeout}
                    ck.append(await bench.peer_run("tests.benchmarks.peer_clickhouse_kafka", cfg,
                                                   f"CH Kafka engine run {i}", wl.events))
                figures["clickhouse_kafka"] = _aggregate(ck)
                speed.take("clickhouse_kafka")
                first_ok = next((r for r in ck if "error" not in r), None)
                if first_ok is not None:
                    figures["clickhouse_kafka"]["pricing_check"] = verify_sql_pricing(first_ok.get("sample", []),
                                                                                       wl.sample)
                    for r in ck:
                        r.pop("sample", None)
                bench.notes.append("ClickHouse Kafka engine peer reads a JSONEachRow copy of the same events "
                                   f"({json_topic}): ClickHouse cannot read Avro single-object encoding. It "
                                   "prices in SQL but does no grant burn-down, sampling or output topic.")
            if "latency" in stages:
                base = (figures.get("all") or {}).get("eps", {}).get("median")
                if opts.latency_rate or base:
                    rate = opts.latency_rate or round(base * 0.5)
                    lat_runs = [await bench.latency_run(rate, f"latency run {i}") for i in runs]
                    agg = _aggregate(lat_runs, ("p50_ms", "p99_ms", "max_ms", "achieved_rate", "to_processor_p50_ms",
                                                "to_processor_p99_ms", "processor_to_visible_p50_ms",
                                                "processor_to_visible_p99_ms", "p99_with_warmup_ms",
                                                "max_with_warmup_ms", "store_p50_ms",
                                                "store_p99_ms", "store_max_ms"))
                    agg["rate"] = rate
                    agg["warmup_s"] = opts.latency_warmup_s
                    figures["latency"] = agg
                    speed.take("latency")
                else:
                    figures["latency"] = {"unavailable": "no all-roles throughput to derive the rate from"}
            if "scaling" in stages:
                two = [await bench.processor_run(wl, f"2 processors run {i}", workers=2) for i in runs]
                figures["scaling_2"] = _aggregate(two, ("eps", "eps_all_assigned", "cpu_per_million",
                                                        "peak_rss_mib"))
                speed.take("scaling")
            if "accounts" in stages:
                acc_prefix = f"bench-acc-{secrets.token_hex(3)}."
                n_acc = opts.rss_accounts
                await create_topics(bench.bootstrap, acc_prefix)
                # Produced while the processor drains it: this stage's figure is memory, which sharing
                # the CPU does not change, and the ~30 s of producing stop counting against the
                # 30-minute budget. Its events/s is therefore not comparable with the processor stage's.
                production = asyncio.create_task(produce_workload(
                    bench.bootstrap, acc_prefix, n_acc, accounts=n_acc, seed=opts.seed, json_topic=None,
                    progress=progress, distinct_accounts=True, sample_every=0))
                try:
                    r = await bench.processor_run(Workload(acc_prefix, n_acc, 0, n_acc, None, 0.0),
                                                  f"processor, {n_acc:,} accounts")
                    acc_wl = await production
                finally:
                    if not production.done():  # the run failed before the workload was out
                        production.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await production
                console.print(_workload_line(acc_wl) + ", during the run", highlight=False)
                figures["accounts_1m"] = {"accounts": n_acc, "grants": acc_wl.grants, "events": n_acc,
                                          "peak_rss_mib": report.summary([r["peak_rss_mib"]] if "error" not in r
                                                                         else []),
                                          "eps": r.get("eps"), "run": r}
                speed.take("accounts")
            if "profile" in stages:
                target = min(opts.profile_events, wl.events)
                r = await bench.processor_run(wl, f"profile processor ({target:,})", target=target,
                                              profile_out=str(opts.out))
                prof = (r.get("workers_results") or [{}])[0].get("profile") if "error" not in r else None
                figures["profile"] = {"events": target, "eps_under_profiler": r.get("eps"), "pyinstrument": prof,
                                      "error": r.get("error"),
                                      "text": str(opts.out / "processor_profile.txt")}
        if "profile" in stages and wl.head:
            from tests.benchmarks.profile_summary import micro_timings

            figures.setdefault("profile", {})["micro_us_per_event"] = micro_timings(wl.head, wl.head_encoded)
    finally:
        for proc in list(bench.procs):
            await bench.kill(proc, grace=5)
        if broker is not None:
            broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    speed.take("end")
    results["machine_speed"] = speed.summary()
    if (speed_note := speed.note()) is not None:
        bench.notes.append(speed_note)
    results["elapsed_seconds"] = time.monotonic() - started
    _ratios_and_bars(results)
    results["environment"] = report.environment()
    results["environment"]["clickhouse"] = _first(figures, "clickhouse_version")
    return results


def _first(figures: dict[str, Any], key: str) -> Any:
    for stage in figures.values():
        for r in (stage or {}).get("runs", []) if isinstance(stage, dict) else []:
            if isinstance(r, dict) and r.get(key):
                return r[key]
    return None


def _median(figures: dict[str, Any], stage: str, key: str = "eps") -> float | None:
    s = (figures.get(stage) or {}).get(key)
    return s.get("median") if isinstance(s, dict) else None


def _ratios_and_bars(results: dict[str, Any]) -> None:
    f = results["figures"]
    proc, sink, allr = _median(f, "processor"), _median(f, "sink"), _median(f, "all")
    hw, ck = _median(f, "handwritten"), _median(f, "clickhouse_kafka")
    two = _median(f, "scaling_2", "eps_all_assigned") or _median(f, "scaling_2")
    ratios: dict[str, float | None] = {
        "vs_handwritten": proc / hw if proc and hw else None,
        "all_vs_handwritten": allr / hw if allr and hw else None,
        "vs_clickhouse_kafka": allr / ck if allr and ck else None,
        "processor_vs_clickhouse_kafka": proc / ck if proc and ck else None,
        "scaling": two / proc if two and proc else None,
    }
    results["ratios"] = ratios
    p99 = _median(f, "latency", "p99_ms")
    rss = _median(f, "accounts_1m", "peak_rss_mib")
    accounts = (f.get("accounts_1m") or {}).get("accounts", 0)

    def bar(figure: str, value: float | None, ok_if: Any, text: str) -> dict[str, Any]:
        return {"figure": figure, "value": value, "ok": None if value is None else bool(ok_if(value)), "text": text}

    results["bars"] = [
        bar("processor", proc, lambda v: v >= 20_000, ">= 20,000/s per worker"),
        bar("sink", sink, lambda v: v >= 100_000, ">= 100,000 rows/s"),
        bar("all", allr, lambda v: v >= 12_000, ">= 12,000/s"),
        bar("latency", p99, lambda v: v <= 2_000, "p99 <= 2 s"),
        bar("accounts_1m", rss if accounts >= 1_000_000 else None, lambda v: v <= 1024,
            "<= 1 GiB with 1M accounts" + ("" if accounts >= 1_000_000 else f" (only {accounts:,} here)")),
        bar("vs_handwritten", ratios["vs_handwritten"], lambda v: v >= 0.5, ">= 0.5x hand-written"),
    ]


def parse_args(argv: Sequence[str] | None) -> Options:
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks.run", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~50k events, 1 run per figure (a few minutes)")
    ap.add_argument("--events", type=int, help="events in the throughput workload (default 1M, quick 50k)")
    ap.add_argument("--runs", type=int, help="runs per figure (default 3, quick 1)")
    ap.add_argument("--out", type=Path, default=Path("bench-results"), help="directory for bench.json/bench.png")
    ap.add_argument("--accounts", type=int, help="accounts in the throughput workload (default 20k)")
    ap.add_argument("--rss-accounts", type=int, help="distinct accounts for the memory figure (default 1M, "
                                                     "quick 50k)")
    ap.add_argument("--latency-seconds", type=float,
                    help="duration of each fixed-rate run, warm-up included (default 20, quick 10)")
    ap.add_argument("--latency-warmup", type=float, dest="latency_warmup_s",
                    help="leading seconds of each latency run left out of p50/p99/max (default 5, quick 3)")
    ap.add_argument("--latency-rate", type=int, help="events/s of the latency runs (default: 50%% of the "
                                                     "all-roles throughput measured in the same run)")
    ap.add_argument("--profile-events", type=int, help="events for the profiled processor run (default 50k)")
    ap.add_argument("--bootstrap", help="use this Kafka instead of starting one (the tests' session broker)")
    ap.add_argument("--stages", help=f"comma-separated stages of {','.join(STAGES)} (default: all but "
                                     "profile)")
    ap.add_argument("--run-timeout", type=float, help="seconds before a single run is abandoned")
    a = ap.parse_args(argv)
    o = Options(quick=a.quick, out=a.out)
    if a.quick:
        o.events, o.runs, o.rss_accounts, o.latency_seconds, o.profile_events = 50_000, 1, 50_000, 10.0, 50_000
        o.latency_warmup_s = 3.0
        o.accounts = 5_000
    for name in ("events", "runs", "accounts", "rss_accounts", "latency_seconds", "profile_events", "bootstrap",
                 "run_timeout", "latency_rate", "latency_warmup_s"):
        value = getattr(a, name)
        if value is not None:
            setattr(o, name, value)
    if not 0 <= o.latency_warmup_s < o.latency_seconds:
        ap.error(f"--latency-warmup must be at least 0 and shorter than the run ({o.latency_seconds:g} s)")
    if a.stages:
        o.stages = frozenset(s.strip() for s in a.stages.split(",") if s.strip())
        unknown = sorted(o.stages - set(STAGES))
        if unknown or not o.stages:
            ap.error(f"--stages takes {','.join(STAGES)}; "
                     + (f"unknown: {','.join(unknown)}" if unknown else "none given"))
    return o


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    opts = parse_args(argv)
    # The figures table needs about 130 columns; narrower terminals would wrap every cell.
    console = Console(width=max(shutil.get_terminal_size((130, 40)).columns, 130))
    try:
        results = asyncio.run(_main(opts, console))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("[yellow]interrupted; every process the benchmark started was stopped[/yellow]")
        raise SystemExit(130) from None
    report.write_json(opts.out / "bench.json", results)
    chart_note = report.write_chart(opts.out / "bench.png", results)
    if chart_note:
        results["notes"].append(chart_note)
    (opts.out / "bench.md").write_text(report.markdown_table(results))
    report.print_table(console, results)
    console.print(f"wrote {opts.out / 'bench.json'}, {opts.out / 'bench.md'}"
                  + ("" if chart_note else f", {opts.out / 'bench.png'}")
                  + f" in {results['elapsed_seconds']:.0f}s")
    return results


if __name__ == "__main__":
    main()
