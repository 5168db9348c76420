"""The results as a text table for the terminal and as a JSON document."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from uniquerand.bench.results import Row

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
