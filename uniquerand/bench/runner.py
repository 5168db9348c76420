"""Runs the whole comparison: per prefill level a fresh instance folder and server, then one closed-loop
load per row, waiting for the server to go idle between rows; stops every process it started."""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from uniquerand.bench import procfs
from uniquerand.bench.chart import draw_chart
from uniquerand.bench.load import LoadResult, wrk_path
from uniquerand.bench.prefill import prefill_instance
from uniquerand.bench.pyclient import run_python
from uniquerand.bench.report import write_json
from uniquerand.bench.results import Ledger, Row, build_row, median_rows, with_baseline_around
from uniquerand.bench.server import BenchError, ExternalServer, GunicornServer, Server, wait_until_idle
from uniquerand.bench.targets import HEALTHZ, Target, plan
from uniquerand.bench.wrk import run_wrk

Say = Callable[..., None]  # say(message, fg=None): progress for the terminal


@dataclass
class BenchOptions:
    url: str | None = None
    workers: int | None = None
    threads: int | None = None
    worker_class: str | None = None
    prefills: tuple[int, ...] = (0,)
    stages: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ("int", "float")
    count: int | None = None
    concurrency: int = 32
    duration: int = 10
    # Seconds of the same load before each row's measured window, so that every worker has served the
    # endpoint (tables built, connections and leases taken); its numbers are checked for duplicates too.
    warmup: int = 1
    # "each": every row's ratio divides by the mean of the /healthz runs measured just before and just after it,
    # so that a shared machine's drift over the minutes of a run does not land on the ratios; "once": the
    # level's first /healthz row.
    baseline: str = "each"
    # Passes over every row of a level (against the same server and ledger): the table shows each row's median
    # round, so one unlucky minute of a shared machine does not decide a row.
    repeat: int = 1
    client: str = "auto"  # auto, wrk or python
    request_timeout: float = 30.0
    idle_timeout: float = 120.0
    output: Path = Path("bench-results")
    chart: bool = True


@dataclass
class BenchOutcome:
    rows: list[Row]  # every round's
    medians: list[Row]  # per row, its median round (see results.median_rows)
    json_path: Path
    chart_path: Path | None
    duplicates: int
    warnings: list[str]


def choose_generator(client: str) -> tuple[str, str | None]:
    """("wrk", its path) where wrk is wanted and installed, else ("python", None)."""
    executable = wrk_path()
    if client == "wrk" and executable is None:
        raise BenchError("--client wrk: wrk is not installed (Debian: apt-get install wrk).")
    if client in ("auto", "wrk") and executable:
        return "wrk", executable
    return "python", None


def run_bench(options: BenchOptions, say: Say) -> BenchOutcome:
    if options.url and options.prefills != (0,):
        raise BenchError("--prefill needs the bench's own server (an instance folder it owns); drop --url.")
    generator, executable = choose_generator(options.client)
    cpus = os.cpu_count() or 1
    say(
        f"load generator: {generator} on the same {cpus}-core machine as the server; it competes with the "
        "server for CPU, so its own use is reported (cli cpu%, 100 = one core).",
        fg="yellow",
    )
    rows: list[Row] = []
    warnings: list[str] = []
    servers: list[dict] = []
    levels: list[int | None] = [None] if options.url else list(options.prefills)
    for level in levels:
        rows += _run_level(options, level, generator, executable, say, warnings, servers)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    settings = {
        "started": stamp,
        "machine": {"cpus": cpus, "python": platform.python_version(), "system": platform.platform()},
        "generator": generator,
        "servers": servers,
        "options": {key: str(value) if isinstance(value, Path) else value for key, value in asdict(options).items()},
        "warnings": warnings,
    }
    medians = median_rows(rows)
    json_path = options.output / f"bench-{stamp}.json"
    write_json(json_path, settings, rows, medians)
    chart_path = None
    if options.chart and any(row.prefill is not None for row in rows):
        chart_path = json_path.with_suffix(".png")
        title = f"uniquerand, {settings['servers'][0].get('workers')} workers, concurrency {options.concurrency}, "
        title += f"{options.duration}s per row, {generator} on {cpus} cores ({stamp})"
        if options.repeat > 1:
            title += f", median of {options.repeat} rounds"
        draw_chart(chart_path, [row for row in medians if row.prefill is not None], title)
    return BenchOutcome(rows, medians, json_path, chart_path, sum(row.duplicates for row in rows), warnings)


def _run_level(
    options: BenchOptions,
    level: int | None,
    generator: str,
    executable: str | None,
    say: Say,
    warnings: list[str],
    servers: list[dict],
) -> list[Row]:
    workdir = Path(tempfile.mkdtemp(prefix="uniquerand-bench-"))
    server: Server | None = None
    try:
        if options.url:
            server = ExternalServer(options.url)
        else:
            instance = workdir / "instance"
            if level:
                say(f"prefilling a fresh instance folder to {level:,} numbers per stage and type")
                prefill_instance(instance, level, list(options.stages), list(options.kinds), say)
            server = GunicornServer(
                instance, options.workers, options.threads, workdir / "gunicorn.log", options.worker_class
            )
            say(f"starting gunicorn on 127.0.0.1:{server.port}")
            server.start()
        servers.append({"prefill": level, **server.description})
        targets, probed = plan(server, list(options.stages), list(options.kinds), options.count)
        ledger = Ledger()
        for ledger_key, numbers in probed.items():
            ledger.record(ledger_key, numbers)
        rows: list[Row] = []
        # The level's /healthz row ("once"), or the /healthz run just before the next row ("each"). plan()
        # puts /healthz first, so it is set before any stage row.
        healthz_ok: float | None = None

        def run(target: Target, baseline: float | None) -> Row:
            return _run_row(options, level, target, server, generator, executable, ledger, baseline, workdir)

        # With a baseline on both sides of each row, a later round starts from the last row's /healthz run: a
        # /healthz row of its own would run twice in a row.
        passes = [(round_number, number, target) for round_number in range(1, options.repeat + 1)
                  for number, target in enumerate(targets, 1)
                  if round_number == 1 or options.baseline != "each" or target.stage != HEALTHZ]  # fmt: skip
        for round_number, number, target in passes:
            where = f"{'-' if level is None else f'{level:,}'}"
            if options.repeat > 1:
                where += f" round {round_number}/{options.repeat}"
            prefix = f"[{where} {number}/{len(targets)}] {target.label}"
            if target.stage == HEALTHZ:
                row = run(target, None)
                healthz_ok = row.ok_per_s
            else:
                row = run(target, healthz_ok)
                if options.baseline == "each":
                    # The run after this row is the one before the next: one /healthz run per row, as before.
                    after = run(targets[0], None).ok_per_s
                    row, healthz_ok = with_baseline_around(row, healthz_ok, after), after
            if row.idle_wait_s is None:
                warnings.append(f"{prefix}: the server was still busy after {options.idle_timeout:.0f}s")
                say(f"{prefix}: server still busy after {options.idle_timeout:.0f}s; measured anyway", fg="yellow")
            say(_progress_line(prefix, row), fg="red" if row.duplicates else None)
            rows.append(replace(row, round=round_number))
        return rows
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _run_row(
    options: BenchOptions,
    level: int | None,
    target: Target,
    server: Server,
    generator: str,
    executable: str | None,
    ledger: Ledger,
    healthz_ok: float | None,
    workdir: Path,
) -> Row:
    bodies = workdir / "row"
    warmup_duplicates = 0
    try:
        if options.warmup:
            wait_until_idle(server, options.idle_timeout)
            warmup = _load(options, target, server, generator, executable, bodies, options.warmup)
            warmup_duplicates = build_row(level, target, warmup, ledger, healthz_ok, [], 0.0, None).duplicates
            shutil.rmtree(bodies)
        idle = wait_until_idle(server, options.idle_timeout)
        workers = server.worker_pids()
        for pid in workers:
            procfs.reset_peak_memory(pid)
        cpu_before = procfs.cpu_seconds(workers)
        load = _load(options, target, server, generator, executable, bodies, options.duration)
        cpu = procfs.cpu_seconds(workers) - cpu_before
        peaks = [kib for kib in map(procfs.peak_memory_kib, server.worker_pids()) if kib is not None]
        row = build_row(level, target, load, ledger, healthz_ok, peaks, cpu, idle)
        return replace(row, duplicates=row.duplicates + warmup_duplicates)
    finally:
        shutil.rmtree(bodies, ignore_errors=True)


def _load(
    options: BenchOptions,
    target: Target,
    server: Server,
    generator: str,
    executable: str | None,
    bodies: Path,
    duration: int,
) -> LoadResult:
    if generator == "wrk":
        url = f"http://127.0.0.1:{server.port}{target.path}"
        threads = min(os.cpu_count() or 1, options.concurrency)
        return run_wrk(executable, url, options.concurrency, duration, threads, options.request_timeout, bodies)
    return run_python(server.port, target.path, options.concurrency, duration, options.request_timeout, bodies)


def _progress_line(prefix: str, row: Row) -> str:
    statuses = " ".join(f"{status}:{n}" for status, n in row.statuses.items())
    return (
        f"{prefix}: {row.requests_per_s:,.0f} req/s, {row.numbers_per_s:,.0f} numbers/s, "
        f"ratio {row.ratio_to_healthz or 0:.2f} (/healthz {row.healthz_ok_per_s or 0:,.0f}/s), "
        f"p99 {row.latency_ms.get('p99') or 0:,.1f} ms, {statuses or 'no responses'}, "
        f"{row.duplicates} duplicates, cli cpu {row.client_cpu_percent:.0f}%"
    )
