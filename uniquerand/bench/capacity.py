"""What the database server sustains, measured with pgbench against the bench's database (commits/s, updates/s of
one hot row, WAL bytes/s), and the ceilings of one database server that follow for a row's cost."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from uniquerand.bench.cluster import ClusterError, bin_folder
from uniquerand.bench.database import BenchDatabase
from uniquerand.bench.server import BenchError

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


def pgbench_path() -> Path | None:
    try:
        path = bin_folder() / "pgbench"
    except ClusterError:
        return None
    return path if path.exists() else None


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
