"""`flask bench --cost`: what the numbers of each PostgreSQL-backed row cost the database server (statements,
commits, WAL per 1000 numbers served, read from the server's own statistics around a run of the row), what
the server sustains (pgbench against the same database), and from both the projected ceiling of one
database server in numbers/s and how many app hosts it carries at the rate one host served.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from uniquerand.bench.database import Activity, BenchDatabase, pgbench_path
from uniquerand.bench.results import Row
from uniquerand.bench.server import BenchError, Server, wait_until_idle
from uniquerand.bench.targets import HEALTHZ, Target

# A PostgreSQL 15 backend publishes its statistics at most once a second while busy; the rest 10 s after it
# went idle (PGSTAT_IDLE_INTERVAL). A snapshot taken sooner after a run would miss up to a second of it.
STATS_SETTLE = 11.0
# Rows every lease of a kind updates: their updates queue behind each other's commit.
HOT_ROW_STATEMENTS = ("UPDATE uniquerand_v5_counters",)
# The statements counted: those that do work. Not transaction control (BEGIN, COMMIT, SAVEPOINT): PostgreSQL
# 15's pg_stat_statements counts a prepared utility statement on its first execution only, and psycopg
# prepares every statement from its sixth use on a connection. Transactions are the commits column.
COUNTED = re.compile(r"(WITH|SELECT|INSERT|UPDATE|DELETE|MERGE|VALUES)\b", re.IGNORECASE)
# The server's capacity, each with pgbench: (name, clients, script). Every transaction commits durably
# (PGOPTIONS sets synchronous_commit=on, as the stores do).
CALIBRATION_TABLES = [
    "CREATE TABLE uniquerand_bench_commits (code bigint PRIMARY KEY)",
    "CREATE TABLE uniquerand_bench_hot (id int PRIMARY KEY, n bigint NOT NULL)",
    "INSERT INTO uniquerand_bench_hot VALUES (1, 0)",
    "CREATE TABLE uniquerand_bench_wal (code bigint NOT NULL)",
]
CALIBRATION_TABLE_NAMES = ("uniquerand_bench_commits", "uniquerand_bench_hot", "uniquerand_bench_wal")
CALIBRATIONS = (
    ("commits", 32, "\\set code random(1, 9000000000000000000)\n"
     "INSERT INTO uniquerand_bench_commits VALUES (:code) ON CONFLICT DO NOTHING;\n"),
    ("hot_row", 8, "UPDATE uniquerand_bench_hot SET n = n + 1000 WHERE id = 1;\n"),
    ("wal", 2, "INSERT INTO uniquerand_bench_wal SELECT generate_series(1, 10000);\n"),
)  # fmt: skip
PER_1000 = (
    ("statements", None),
    ("commits", "xact_commit"),
    ("rollbacks", "xact_rollback"),
    ("wal_bytes", "wal_bytes"),
    ("wal_records", "wal_records"),
    ("wal_fpi", "wal_fpi"),
    ("wal_syncs", "wal_sync"),
)


@dataclass
class Capacity:
    """What the database server sustains, measured with pgbench from this machine."""

    seconds: int
    cores: int  # the CPU limit assumes a database server with as many cores as this machine
    commits_per_s: float | None = None  # one-row INSERT transactions, 32 clients
    hot_row_updates_per_s: float | None = None  # UPDATEs of one row, each its own transaction, 8 clients
    wal_bytes_per_s: float | None = None  # 10,000-row INSERT transactions, 2 clients
    server_cpu_ms_per_commit: float | None = None
    commands: dict[str, str] = field(default_factory=dict)
    note: str | None = None


@dataclass
class CostRow:
    prefill: int | None
    label: str
    stage: str
    type: str | None
    count: int | None
    numbers: int  # served (2xx) in the cost run
    seconds: float
    numbers_per_s: float  # of the cost run
    per_1000: dict[str, float | None]  # per 1000 numbers served
    top_statements: list[tuple[str, float]]  # (statement, calls per 1000 numbers), most called first
    connections: int  # the app host's connections to the database after the run (its pools' size)
    limits: dict[str, float] = field(default_factory=dict)  # numbers/s one database server sustains, by limit
    ceiling_numbers_per_s: float | None = None
    limit: str | None = None
    host_numbers_per_s: float | None = None  # the rate one app host served (the row's median round)
    hosts: float | None = None  # hosts at that rate whose work one database server sustains
    hosts_by_connections: float | None = None  # hosts of this many connections the server admits
    duplicates: int = 0
    # What the server did per second meanwhile without load (an idle app host: heartbeats, the server's own
    # processes), measured once per level and subtracted from each row's figures.
    background_per_s: dict[str, float | None] = field(default_factory=dict)


def measure_capacity(database: BenchDatabase, seconds: int, rounds: int, say: Callable[..., None]) -> Capacity:
    """Runs the CALIBRATIONS against the bench's database (in tables of its own, dropped afterwards), each
    `rounds` times: the median run counts."""
    capacity = Capacity(seconds=seconds, cores=os.cpu_count() or 1)
    pgbench = pgbench_path()
    if pgbench is None:
        capacity.note = "pgbench not found (Debian: postgresql-client): no ceilings"
        say(f"--cost: {capacity.note}", fg="yellow")
        return capacity
    database.execute(CALIBRATION_TABLES)
    try:
        with tempfile.TemporaryDirectory(prefix="uniquerand-pgbench-") as folder:
            for name, clients, script in CALIBRATIONS:
                path = Path(folder) / f"{name}.sql"
                path.write_text(script)
                command = [str(pgbench), "-n", f"-c{clients}", "-j2", f"-T{seconds}", "-f", str(path)]
                capacity.commands[name] = f"{' '.join(command[:-2])} -f {name}.sql  # {name}.sql: {script.strip()}"
                say(f"--cost: server capacity, {name}: pgbench with {clients} clients for {seconds}s, {rounds}x")
                runs = []
                for _ in range(rounds):
                    before = database.snapshot()
                    tps = _pgbench_tps([*command, database.url], seconds)
                    runs.append((tps, database.snapshot().since(before, breakdown=False)))
                tps, activity = sorted(runs, key=lambda run: run[0])[(rounds - 1) // 2]
                if name == "commits":
                    capacity.commits_per_s = round(tps, 1)
                    if activity.cpu_seconds is not None:
                        capacity.server_cpu_ms_per_commit = round(1000 * activity.cpu_seconds / (tps * seconds), 4)
                elif name == "hot_row":
                    capacity.hot_row_updates_per_s = round(tps, 1)
                else:
                    capacity.wal_bytes_per_s = round(activity.counters["wal_lsn"] / seconds, 1)
    finally:
        database.execute([f"DROP TABLE IF EXISTS {table}" for table in CALIBRATION_TABLE_NAMES])
    return capacity


def _pgbench_tps(command: list[str], seconds: int) -> float:
    env = {**os.environ, "PGOPTIONS": "-c synchronous_commit=on"}
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, env=env, check=False)
    except subprocess.TimeoutExpired as err:
        raise BenchError(f"pgbench did not finish: {' '.join(command[:-1])}") from err
    found = re.search(r"tps = ([\d.]+)", result.stdout)
    if result.returncode != 0 or not found:
        raise BenchError(f"pgbench failed ({result.returncode}): {(result.stdout + result.stderr)[-1500:]}")
    return float(found.group(1))


def measure_costs(
    level: int | None,
    targets: list[Target],
    server: Server,
    database: BenchDatabase,
    capacity: Capacity,
    run: Callable[[Target], Row],
    idle_seconds: float,
    idle_timeout: float,
    say: Callable[..., None],
) -> list[CostRow]:
    """First the server's activity without load for `idle_seconds` (the background), then per target: one run
    of the row (no warm-up: the server has served it already) between two snapshots of the server's statistics,
    each taken once they settled; a target starts from the previous one's snapshot.

    Autovacuum is off for the stages' tables meanwhile: each interval ends with a VACUUM of the tables written
    in it, so that a row is charged with the cleanup it causes, not one that happens to run when autovacuum
    wakes up."""
    database.set_autovacuum(False)
    try:
        database.vacuum(written_only=False)
        settle_after(time.monotonic(), server, idle_timeout)
        before, start = database.snapshot(), time.monotonic()
        time.sleep(idle_seconds)
        database.vacuum()
        after, end = database.snapshot(), time.monotonic()
        background = rates(after.since(before), end - start)
        rows = []
        for target in targets:
            if target.stage == HEALTHZ:
                continue
            before, start = after, end
            row = run(target)
            settle_after(time.monotonic(), server, idle_timeout)
            database.vacuum()
            after, end = database.snapshot(), time.monotonic()
            cost = cost_row(level, target, row, without_background(after.since(before), background, end - start))
            cost.background_per_s = {key: round(value, 3) for key, value in background.items()}
            rows.append(with_ceiling(cost, capacity, database.description))
            where = "-" if level is None else f"{level:,}"
            say(f"[{where} cost] {cost_line(cost)}", fg="red" if row.duplicates else None)
        return rows
    finally:
        database.set_autovacuum(True)


def settle_after(load_end: float, server: Server, idle_timeout: float) -> None:
    """Returns once the server is idle and STATS_SETTLE seconds have passed since `load_end`."""
    wait_until_idle(server, idle_timeout)
    time.sleep(max(0.0, load_end + STATS_SETTLE - time.monotonic()))


def _statements(activity: Activity) -> dict[str, int] | None:
    if activity.calls is None:
        return None
    return {query: n for query, n in activity.calls.items() if COUNTED.match(query.lstrip())}


def rates(activity: Activity, seconds: float) -> dict[str, float]:
    """Per second: the counters, the WAL's breakdown, the statements counted, the server's CPU seconds."""
    result = {key: value / seconds for key, value in {**activity.counters, **(activity.wal or {})}.items()}
    statements = _statements(activity)
    if statements is not None:
        result["statements"] = sum(statements.values()) / seconds
    if activity.cpu_seconds is not None:
        result["cpu_seconds"] = activity.cpu_seconds / seconds
    return result


def without_background(activity: Activity, background: dict[str, float], seconds: float) -> Activity:
    """`activity` less `seconds` of the background (never below 0); the background's statements come off the
    statements it ran."""

    def less(values: dict[str, int]) -> dict[str, int]:
        return {key: max(0, round(value - background.get(key, 0.0) * seconds)) for key, value in values.items()}

    counters = less(activity.counters)
    calls = _statements(activity)
    if calls is not None:
        extra = round(background.get("statements", 0.0) * seconds)
        total = sum(calls.values())
        calls = {query: n * max(total - extra, 0) / total for query, n in calls.items()} if total else calls
    cpu = activity.cpu_seconds
    if cpu is not None:
        cpu = max(0.0, cpu - background.get("cpu_seconds", 0.0) * seconds)
    return Activity(counters, calls, cpu, activity.connections, activity.wal and less(activity.wal))


def cost_row(level: int | None, target: Target, row: Row, activity: Activity) -> CostRow:
    numbers = max(row.numbers, 1)
    calls = activity.calls
    statements = sum(calls.values()) if calls is not None else None
    per_1000: dict[str, float | None] = {}
    for name, counter in PER_1000:
        value = statements if counter is None else activity.counters[counter]
        per_1000[name] = None if value is None else round(1000 * value / numbers, 3)
    written = sum(activity.counters[key] for key in ("tup_inserted", "tup_updated", "tup_deleted"))
    per_1000["tuples_written"] = round(1000 * written / numbers, 3)
    for name, key in (("durable_commits", "commit_records"), ("wal_fpi_bytes", "fpi_bytes")):
        per_1000[name] = None if activity.wal is None else round(1000 * activity.wal[key] / numbers, 3)
    hot = None
    if calls is not None:
        hot = sum(n for query, n in calls.items() if _normalized(query).startswith(HOT_ROW_STATEMENTS))
    per_1000["hot_row_updates"] = None if hot is None else round(1000 * hot / numbers, 3)
    cpu = activity.cpu_seconds
    per_1000["server_cpu_ms"] = None if cpu is None else round(1000 * 1000 * cpu / numbers, 3)
    top = sorted((calls or {}).items(), key=lambda item: -item[1])[:8]
    return CostRow(
        prefill=level, label=target.label, stage=target.stage, type=target.kind, count=target.count,
        numbers=row.numbers, seconds=row.duration_s, numbers_per_s=row.numbers_per_s, per_1000=per_1000,
        top_statements=[(_normalized(query)[:160], round(1000 * n / numbers, 3)) for query, n in top],
        connections=activity.connections, duplicates=row.duplicates,
    )  # fmt: skip


def with_ceiling(cost: CostRow, capacity: Capacity, server: dict) -> CostRow:
    """Sets the limits of one database server for this row, the lowest of them, and how many hosts' connections
    the server takes (max_connections less the superusers' reserve)."""
    cost.limits = ceilings(cost.per_1000, capacity)
    cost.limit = min(cost.limits, key=cost.limits.get) if cost.limits else None
    cost.ceiling_numbers_per_s = cost.limits[cost.limit] if cost.limit else None
    usable = server.get("max_connections", 0) - server.get("superuser_reserved_connections", 0)
    if cost.connections:
        cost.hosts_by_connections = round(usable / cost.connections, 1)
    return cost


def ceilings(per_1000: dict[str, float | None], capacity: Capacity) -> dict[str, float]:
    """Numbers/s one database server sustains by each limit: its commits/s (those that wrote, where the WAL
    tells them, else every commit), its WAL bytes/s (without full-page images where the WAL tells them: at a
    ceiling's rate they are a vanishing share, one per page per checkpoint), the updates/s of one row (for rows
    every lease updates), its CPU (as many cores as this machine)."""
    commits = per_1000.get("durable_commits")
    wal = per_1000["wal_bytes"]
    if wal is not None and per_1000.get("wal_fpi_bytes") is not None:
        wal = max(wal - per_1000["wal_fpi_bytes"], 0.0)
    limits = {}
    for limit, per, sustained in (
        ("commits", per_1000["commits"] if commits is None else commits, capacity.commits_per_s),
        ("wal", wal, capacity.wal_bytes_per_s),
        ("hot row", per_1000["hot_row_updates"], capacity.hot_row_updates_per_s),
        ("cpu", per_1000["server_cpu_ms"], capacity.cores * 1000.0),
    ):
        if per and per > 0 and sustained:
            limits[limit] = round(1000 * sustained / per, 1)
    return limits


def with_host_rates(costs: list[CostRow], medians: list[Row]) -> list[CostRow]:
    """Sets each cost row's per-host rate (the same row's median round of the level, else the cost run's own)
    and the app hosts one database server carries at that rate."""
    rates = {(row.prefill, row.label): row.numbers_per_s for row in medians}
    for cost in costs:
        cost.host_numbers_per_s = rates.get((cost.prefill, cost.label), cost.numbers_per_s)
        if cost.ceiling_numbers_per_s and cost.host_numbers_per_s:
            cost.hosts = round(cost.ceiling_numbers_per_s / cost.host_numbers_per_s, 1)
    return costs


def _normalized(query: str) -> str:
    return " ".join(query.split())


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def cost_line(cost: CostRow) -> str:
    per = cost.per_1000
    return (
        f"{cost.label}: {cost.numbers:,} numbers, per 1000: {_number(per['statements'])} statements, "
        f"{_number(per['commits'], 1)} commits, {_number(per['wal_bytes'])} WAL bytes, "
        f"{_number(per['server_cpu_ms'], 1)} ms server CPU; ceiling {_number(cost.ceiling_numbers_per_s)}/s "
        f"({cost.limit or '-'})"
    )


COLUMNS = (
    ("row", 18, "<"), ("host numbers/s", 14, ">"), ("statements", 10, ">"), ("commits", 7, ">"),
    ("durable", 7, ">"), ("WAL bytes", 10, ">"), ("of it FPI", 10, ">"), ("srv cpu ms", 10, ">"),
    ("ceiling numbers/s", 17, ">"), ("limit", 7, "<"), ("hosts", 6, ">"), ("conns", 5, ">"),
    ("hosts by conns", 14, ">"),
)  # fmt: skip


def cost_table(costs: list[CostRow], capacity: Capacity | None) -> str:
    """Per level, the cost per 1000 numbers of each row, the projected ceiling of one database server and the
    hosts it carries (by its work, and by its connections: max_connections over what the host opened); then the
    capacity the ceilings come from, and the background subtracted."""

    def line(cells: list[str]) -> str:
        return "  ".join(f"{cell:{align}{width}}" for cell, (_, width, align) in zip(cells, COLUMNS, strict=True))

    lines = []
    for level in sorted({cost.prefill for cost in costs}, key=lambda level: level or 0):
        lines += ["", f"PostgreSQL cost per 1000 numbers served, {level or 0:,} issued", line([c[0] for c in COLUMNS])]
        for cost in (cost for cost in costs if cost.prefill == level):
            per = cost.per_1000
            lines.append(line([
                cost.label, _number(cost.host_numbers_per_s), _number(per["statements"]), _number(per["commits"], 1),
                _number(per["durable_commits"], 1), _number(per["wal_bytes"]), _number(per["wal_fpi_bytes"]),
                _number(per["server_cpu_ms"], 1), _number(cost.ceiling_numbers_per_s), cost.limit or "-",
                _number(cost.hosts, 1), str(cost.connections), _number(cost.hosts_by_connections, 1),
            ]))  # fmt: skip
    if capacity is not None:
        lines += ["", f"database server capacity (pgbench, {capacity.seconds}s each, fsync on, synchronous_commit=on):"]
        lines.append(
            f"  commits/s {_number(capacity.commits_per_s)}, "
            f"one-row updates/s {_number(capacity.hot_row_updates_per_s)}, "
            f"WAL bytes/s {_number(capacity.wal_bytes_per_s)}, cores {capacity.cores} (CPU limit: this machine's)"
        )
        if capacity.note:
            lines.append(f"  {capacity.note}")
    for cost in {cost.prefill: cost for cost in costs}.values():
        background = cost.background_per_s
        lines.append(
            f"background of the idle app host at {cost.prefill or 0:,} issued (subtracted above), per second: "
            f"{_number(background.get('statements'), 1)} statements, {_number(background.get('xact_commit'), 1)} "
            f"commits, {_number(background.get('wal_bytes'))} WAL bytes, "
            f"{_number(1000 * background['cpu_seconds'] if 'cpu_seconds' in background else None, 1)} ms server CPU"
        )
    return "\n".join(lines)
