"""The results as text tables for the terminal (the rows; with --cost, their cost to PostgreSQL) and as a JSON
document."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from uniquerand.bench.results import Row

if TYPE_CHECKING:
    from uniquerand.bench.capacity import Capacity
    from uniquerand.bench.cost import CostRow

COLUMNS = (
    ("row", 18, "<"),
    ("req/s", 8, ">"),
    ("numbers/s", 10, ">"),
    ("ratio", 6, ">"),
    ("of rounds", 9, ">"),
    ("p50 ms", 8, ">"),
    ("p95 ms", 8, ">"),
    ("p99 ms", 8, ">"),
    ("statuses", 16, "<"),
    ("dup", 4, ">"),
    ("mem MiB max/sum", 15, ">"),
    ("srv cpu%", 8, ">"),
    ("cli cpu%", 8, ">"),
)


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _cells(row: Row) -> list[str]:
    memory = "-" if row.worker_peak_mib_max is None else f"{row.worker_peak_mib_max:.0f}/{row.worker_peak_mib_sum:.0f}"
    statuses = " ".join(f"{status}:{n}" for status, n in row.statuses.items()) or "none"
    if row.socket_errors:
        statuses += " err:" + str(sum(row.socket_errors.values()))
    return [
        row.label,
        _number(row.requests_per_s),
        "-" if row.stage == "healthz" else _number(row.numbers_per_s),
        _number(row.ratio_to_healthz, 2),
        "-" if not row.ratio_range else f"{row.ratio_range[0]:.2f}-{row.ratio_range[1]:.2f}",
        _number(row.latency_ms.get("p50"), 1),
        _number(row.latency_ms.get("p95"), 1),
        _number(row.latency_ms.get("p99"), 1),
        statuses,
        str(row.duplicates),
        memory,
        _number(row.server_cpu_percent),
        _number(row.client_cpu_percent),
    ]


def _line(cells: list[str]) -> str:
    return "  ".join(f"{cell:{align}{width}}" for cell, (_, width, align) in zip(cells, COLUMNS, strict=True))


def table(rows: list[Row], every_round: list[Row] | None = None) -> str:
    """`rows` as a table per prefill level, then the error codes of `every_round` (default: `rows`), so that
    the errors of a round that is not a row's median are listed too."""
    lines = []
    for level in sorted({row.prefill for row in rows}, key=lambda level: level or 0):
        heading = (
            "a running server (--url)" if level is None else f"numbers already issued per stage and type: {level:,}"
        )
        lines += ["", heading, _line([c[0] for c in COLUMNS])]
        lines += [_line(_cells(row)) for row in rows if row.prefill == level]
    failed = [row for row in every_round or rows if row.error_codes]
    if failed:
        lines += ["", "error codes of the non-2xx responses:"]
        for row in failed:
            codes = ", ".join(f"{code} x{n}" for code, n in row.error_codes.items())
            of_round = f", round {row.round}" if every_round and len(every_round) > len(rows) else ""
            lines.append(f"  {row.label} (prefill {row.prefill}{of_round}): {codes}")
    return "\n".join(lines)


def write_json(path: Path, settings: dict, rows: list[Row], medians: list[Row], cost: dict | None = None) -> None:
    """`rows`: every round's; `medians`: each row's median round, the table's rows; `cost` (--cost): the
    database server's `capacity` and the cost `rows`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "settings": settings,
        "rows": [asdict(row) for row in rows],
        "medians": [asdict(row) for row in medians],
    }
    if cost is not None:
        capacity = cost["capacity"]
        document["cost"] = {
            "capacity": capacity and asdict(capacity),
            "rows": [asdict(row) for row in cost["rows"]],
        }
    path.write_text(json.dumps(document, indent=2) + "\n")


def cost_line(cost: CostRow) -> str:
    per = cost.per_1000
    return (
        f"{cost.label}: {cost.numbers:,} numbers, per 1000: {_number(per['statements'])} statements, "
        f"{_number(per['commits'], 1)} commits, {_number(per['wal_bytes'])} WAL bytes, "
        f"{_number(per['server_cpu_ms'], 1)} ms server CPU; ceiling {_number(cost.ceiling_numbers_per_s)}/s "
        f"({cost.limit or '-'})"
    )


COST_COLUMNS = (
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
        return "  ".join(f"{cell:{align}{width}}" for cell, (_, width, align) in zip(cells, COST_COLUMNS, strict=True))

    lines = []
    for level in sorted({cost.prefill for cost in costs}, key=lambda level: level or 0):
        lines += [
            "",
            f"PostgreSQL cost per 1000 numbers served, {level or 0:,} issued",
            line([c[0] for c in COST_COLUMNS]),
        ]
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
