"""Runs the whole comparison: per prefill level a fresh instance folder and server (and, with a PostgreSQL
database, a second server keeping /v3-/v5 there), then one closed-loop load per row, waiting for the server to
go idle between rows; with --cost, one more run per PostgreSQL row between two readings of the database
server's statistics. Stops every process it started."""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from uniquerand.bench.capacity import Capacity, measure_capacity
from uniquerand.bench.chart import draw_chart
from uniquerand.bench.cost import STATS_SETTLE, CostRow, measure_costs, with_host_rates
from uniquerand.bench.database import BenchDatabase, redacted
from uniquerand.bench.load import wrk_path
from uniquerand.bench.measure import measure_row, progress_line
from uniquerand.bench.options import BenchOptions, BenchOutcome
from uniquerand.bench.prefill import prefill_instance, prefill_on_postgres
from uniquerand.bench.report import write_json
from uniquerand.bench.results import Ledger, Row, median_rows, side_by_side, with_baseline_around
from uniquerand.bench.server import BenchError, ExternalServer, GunicornServer, Server
from uniquerand.bench.spaces import create_spaces, space_targets, verifiable_targets
from uniquerand.bench.targets import HEALTHZ, Target, plan

Say = Callable[..., None]  # say(message, fg=None): progress for the terminal


@dataclass
class _Segment:
    """One server's rows in a level, and the /healthz run its next row divides by."""

    on: str  # "" or "pg" (see Target.server)
    server: Server
    targets: list[Target]
    healthz_ok: float | None = None


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
    on_postgres = options.postgres or bool(options.database_url)
    if options.url and on_postgres:
        raise BenchError("--postgres and --database-url need the bench's own servers; drop --url.")
    if options.postgres and options.database_url:
        raise BenchError("--postgres starts a cluster of its own: give either it or --database-url.")
    if options.cost and not on_postgres:
        raise BenchError("--cost measures the PostgreSQL rows: add --postgres or --database-url.")
    generator, executable = choose_generator(options.client)
    cpus = os.cpu_count() or 1
    say(
        f"load generator: {generator} on the same {cpus}-core machine as the server; it competes with the "
        "server for CPU, so its own use is reported (cli cpu%, 100 = one core).",
        fg="yellow",
    )
    rows: list[Row] = []
    costs: list[CostRow] = []
    warnings: list[str] = []
    servers: list[dict] = []
    levels: list[int | None] = [None] if options.url else list(options.prefills)
    database: BenchDatabase | None = None
    capacity: Capacity | None = None
    try:
        if on_postgres:
            database = BenchDatabase.open(None if options.postgres else options.database_url, say)
            if options.cost:
                capacity = measure_capacity(database, min(options.duration, 10), options.repeat, say)
        for level in levels:
            rows += _run_level(options, level, generator, executable, say, warnings, servers, database, capacity, costs)
    finally:
        if database is not None:
            database.close()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    options_json = {key: str(value) if isinstance(value, Path) else value for key, value in asdict(options).items()}
    options_json["database_url"] = options.database_url and redacted(options.database_url)
    settings = {
        "started": stamp,
        "machine": {"cpus": cpus, "python": platform.python_version(), "system": platform.platform()},
        "generator": generator,
        "servers": servers,
        "database": database.description if database else None,
        "options": options_json,
        "warnings": warnings,
    }
    medians = side_by_side(median_rows(rows))
    with_host_rates(costs, medians)
    json_path = options.output / f"bench-{stamp}.json"
    write_json(json_path, settings, rows, medians, {"capacity": capacity, "rows": costs} if options.cost else None)
    chart_path = None
    if options.chart and any(row.prefill is not None for row in rows):
        chart_path = json_path.with_suffix(".png")
        title = f"uniquerand, {settings['servers'][0].get('workers')} workers, concurrency {options.concurrency}, "
        title += f"{options.duration}s per row, {generator} on {cpus} cores ({stamp})"
        if options.repeat > 1:
            title += f", median of {options.repeat} rounds"
        draw_chart(chart_path, [row for row in medians if row.prefill is not None], title)
    duplicates = sum(row.duplicates for row in rows) + sum(cost.duplicates for cost in costs)
    return BenchOutcome(rows, medians, json_path, chart_path, duplicates, warnings, costs, capacity)


def _run_level(
    options: BenchOptions,
    level: int | None,
    generator: str,
    executable: str | None,
    say: Say,
    warnings: list[str],
    servers: list[dict],
    database: BenchDatabase | None,
    capacity: Capacity | None,
    costs: list[CostRow],
) -> list[Row]:
    workdir = Path(tempfile.mkdtemp(prefix="uniquerand-bench-"))
    started: list[Server] = []
    try:
        if options.url:
            started.append(ExternalServer(options.url))
        else:
            # With a database, the main server keeps every stage in files whatever UNIQUERAND_DATABASE_URL says.
            started.append(_own_server(options, level, workdir, "", database and "", say))
            if database is not None:
                database.empty()
                started.append(_own_server(options, level, workdir, "pg", database.url, say))
        ledger = Ledger()
        segments = []
        for on, server in zip(("", "pg"), started, strict=False):
            servers.append({"prefill": level, "on": on, **server.description})
            targets, probed = plan(server, list(options.stages), list(options.kinds), options.count, on)
            if options.spaces and any(target.stage == "v5" for target in targets):
                say(f"creating {options.spaces:,} named spaces on /v5{'-' + on if on else ''}")
                created = create_spaces(server, options.spaces)
                rss = created["worker_rss_kib"]
                say(f"  {created['seconds']:.1f} s; workers' memory {sum(rss['before']):,} KiB before, "
                    f"{sum(rss['after']):,} KiB after")  # fmt: skip
                servers[-1]["spaces"] = created
                extra = space_targets(options.spaces, on)
                if generator != "wrk" and any(target.spread for target in extra):
                    warnings.append("the spread named-space row needs wrk; skipped")
                    extra = [target for target in extra if not target.spread]
                targets += extra
            if options.verifiable and any(target.stage == "v5" for target in targets):
                if generator != "wrk":
                    warnings.append("the --verifiable rows need wrk (a header per request); skipped")
                else:
                    targets += verifiable_targets(server, on)
            for ledger_key, numbers in probed.items():
                ledger.record(ledger_key, numbers)
            segments.append(_Segment(on, server, targets))
        rows: list[Row] = []
        for round_number in range(1, options.repeat + 1):
            for segment in segments:
                rows += _run_round(options, level, round_number, segment, len(segments), generator, executable,
                                   ledger, workdir, say, warnings)  # fmt: skip
        if options.cost and database is not None and capacity is not None:
            pg = segments[-1]
            no_warmup = replace(options, warmup=0)

            def run_once(target: Target) -> Row:
                return measure_row(no_warmup, level, target, pg.server, generator, executable, ledger, None, workdir)

            say("--cost: one more run of each PostgreSQL row between two readings of the server's statistics")
            quiet, idle = options.duration + STATS_SETTLE, options.idle_timeout
            costs += measure_costs(level, pg.targets, pg.server, database, capacity, run_once, quiet, idle, say)
        return rows
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _own_server(
    options: BenchOptions, level: int | None, workdir: Path, on: str, database_url: str | None, say: Say
) -> GunicornServer:
    """A fresh instance folder, prefilled to `level`, and a gunicorn serving it (`database_url`: see
    `prefill_instance`)."""
    suffix = f"-{on}" if on else ""
    instance = workdir / f"instance{suffix}"
    if on and level:
        say(f"prefilling the PostgreSQL database to {level:,} numbers per stage and type")
        prefill_on_postgres(instance, database_url, level, list(options.stages), list(options.kinds), say)
    elif level:
        say(f"prefilling a fresh instance folder to {level:,} numbers per stage and type")
        prefill_instance(instance, level, list(options.stages), list(options.kinds), say, database_url)
    env = None if database_url is None else {"UNIQUERAND_DATABASE_URL": database_url}
    server = GunicornServer(
        instance, options.workers, options.threads, workdir / f"gunicorn{suffix}.log", options.worker_class, env
    )
    if database_url:
        server.description["database"] = redacted(database_url)
    say(f"starting gunicorn{' on PostgreSQL' if on else ''} on 127.0.0.1:{server.port}")
    server.start()
    return server


def _run_round(
    options: BenchOptions,
    level: int | None,
    round_number: int,
    segment: _Segment,
    servers: int,
    generator: str,
    executable: str | None,
    ledger: Ledger,
    workdir: Path,
    say: Say,
    warnings: list[str],
) -> list[Row]:
    """One pass over the rows of one server. The first /healthz run sets the baseline ("once"), or is the run
    just before the next row ("each"); plan() puts /healthz first, so it is set before any stage row."""
    rows = []
    targets = segment.targets

    def run(target: Target, baseline: float | None) -> Row:
        return measure_row(options, level, target, segment.server, generator, executable, ledger, baseline, workdir)

    for number, target in enumerate(targets, 1):
        # With a baseline on both sides of each row, a later round starts from the last row's /healthz run: a
        # /healthz row of its own would run twice in a row. Not with two servers: the other server's rows ran
        # in between.
        if target.stage == HEALTHZ and round_number > 1 and options.baseline == "each" and servers == 1:
            continue
        where = f"{'-' if level is None else f'{level:,}'}"
        if options.repeat > 1:
            where += f" round {round_number}/{options.repeat}"
        prefix = f"[{where} {number}/{len(targets)}] {target.label}"
        if target.stage == HEALTHZ:
            row = run(target, None)
            segment.healthz_ok = row.ok_per_s
        else:
            row = run(target, segment.healthz_ok)
            if options.baseline == "each":
                # The run after this row is the one before the next: one /healthz run per row, as before.
                after = run(targets[0], None).ok_per_s
                row, segment.healthz_ok = with_baseline_around(row, segment.healthz_ok, after), after
        if row.idle_wait_s is None:
            warnings.append(f"{prefix}: the server was still busy after {options.idle_timeout:.0f}s")
            say(f"{prefix}: server still busy after {options.idle_timeout:.0f}s; measured anyway", fg="yellow")
        say(progress_line(prefix, row), fg="red" if row.duplicates else None)
        rows.append(replace(row, round=round_number))
    return rows
