"""`flask bench --cost`: what the numbers of each PostgreSQL-backed row cost the database server (statements,
commits, WAL per 1000 numbers served, read from the server's own statistics around a run of the row), and with
what the server sustains (`capacity`) the projected ceiling of one database server in numbers/s and how many
app hosts it carries at the rate one host served. Its table is `report.cost_table`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from uniquerand.bench.capacity import Capacity, ceilings
from uniquerand.bench.database import Activity, BenchDatabase
from uniquerand.bench.report import cost_line
from uniquerand.bench.results import Row
from uniquerand.bench.server import Server, wait_until_idle
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
