"""One row's measurement: a warm-up (its duplicates count), the wait for an idle server, the load by wrk or the
Python client, and the workers' CPU time and peak memory around it."""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import replace
from pathlib import Path

from uniquerand.bench import procfs
from uniquerand.bench.load import LoadResult
from uniquerand.bench.options import BenchOptions
from uniquerand.bench.pyclient import run_python
from uniquerand.bench.results import Ledger, Row, build_row
from uniquerand.bench.server import Server, wait_until_idle
from uniquerand.bench.spaces import KEYED_LUA, SPREAD_LUA
from uniquerand.bench.targets import Target
from uniquerand.bench.wrk import run_wrk


def measure_row(
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
        threads = min(os.cpu_count() or 1, options.concurrency)
        path, lua, env = target.path, "", None
        if target.spread:
            path, lua = target.path.replace("{i}", "0"), SPREAD_LUA
            env = {"BENCH_SPREAD": str(target.spread), "BENCH_SPREAD_PATH": target.path}
        if target.variant == "keyed":
            # A new prefix per load (warm-up, rounds): no key is ever sent twice, so nothing is a replay.
            lua, env = KEYED_LUA, {"BENCH_KEY_PREFIX": uuid.uuid4().hex}
        url = f"http://127.0.0.1:{server.port}{path}"
        return run_wrk(
            executable, url, options.concurrency, duration, threads, options.request_timeout, bodies, lua, env
        )
    return run_python(server.port, target.path, options.concurrency, duration, options.request_timeout, bodies)


def progress_line(prefix: str, row: Row) -> str:
    statuses = " ".join(f"{status}:{n}" for status, n in row.statuses.items())
    return (
        f"{prefix}: {row.requests_per_s:,.0f} req/s, {row.numbers_per_s:,.0f} numbers/s, "
        f"ratio {row.ratio_to_healthz or 0:.2f} (/healthz {row.healthz_ok_per_s or 0:,.0f}/s), "
        f"p99 {row.latency_ms.get('p99') or 0:,.1f} ms, {statuses or 'no responses'}, "
        f"{row.duplicates} duplicates, cli cpu {row.client_cpu_percent:.0f}%"
    )
