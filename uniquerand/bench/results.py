"""One row of the table from one load run: rates, latency, statuses, duplicates and the servers' footprint."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace

from uniquerand.bench.load import LoadResult, numbers_in, recorded_responses
from uniquerand.bench.targets import HEALTHZ, Target


class Ledger:
    """Every number seen per (stage, type) across the rows of one prefill level: a number seen twice is a
    duplicate, whichever rows it came from."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], set] = {}

    def record(self, ledger: tuple[str, str], numbers: list) -> int:
        """Records the numbers; returns how many of them had been seen before (within the list too)."""
        seen = self._seen.setdefault(ledger, set())
        before = len(seen)
        seen.update(numbers)
        return len(numbers) - (len(seen) - before)


@dataclass
class Row:
    prefill: int | None  # numbers already issued per stage and type; None for a server given by --url
    label: str
    stage: str
    type: str | None
    count: int | None
    path: str
    generator: str
    duration_s: float
    requests: int
    requests_per_s: float
    ok_per_s: float
    numbers: int
    numbers_per_s: float
    ratio_to_healthz: float | None
    healthz_ok_per_s: float | None  # the /healthz rate the ratio divides by (see BenchOptions.baseline)
    healthz_around: list[float] | None  # baseline "each": the /healthz runs just before and after the row
    latency_ms: dict[str, float | None]
    statuses: dict[str, int]
    socket_errors: dict[str, int]
    bad_bodies: int
    error_codes: dict[str, int]  # the `code` of every error body, so a reader sees why requests failed
    duplicates: int
    worker_peak_mib_max: float | None
    worker_peak_mib_sum: float | None
    server_cpu_percent: float
    client_cpu_percent: float
    idle_wait_s: float | None
    round: int = 1  # with --repeat: which pass over the rows measured this one
    # In the table of medians (see `median_rows`): the lowest and highest ratio of the row's rounds.
    ratio_range: list[float] | None = None
    server: str = ""  # "" for the bench's main server, "pg" for its server on PostgreSQL (see Target.server)


def error_code(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return "not_json"
    return str(data.get("code", "no_code")) if isinstance(data, dict) else "not_an_object"


def build_row(
    prefill: int | None,
    target: Target,
    load: LoadResult,
    ledger: Ledger,
    healthz_ok_per_s: float | None,
    worker_peaks_kib: list[int],
    server_cpu_seconds: float,
    idle_wait_s: float | None,
) -> Row:
    statuses: Counter = Counter()
    numbers: list = []
    error_codes: Counter = Counter()
    bad = 0
    for status, body in recorded_responses(load.bodies_dir):
        statuses[status] += 1
        if not 200 <= status < 300:
            error_codes[error_code(body)] += 1
            continue
        if target.ledger is None:
            continue
        found = numbers_in(body)
        if found is None:
            bad += 1
        else:
            numbers.extend(found)
    duplicates = ledger.record(target.ledger, numbers) if target.ledger else 0
    duration = load.duration or 1e-9
    requests = sum(statuses.values())
    ok = sum(n for status, n in statuses.items() if 200 <= status < 300)
    ok_per_s = ok / duration
    if target.ledger is None:
        healthz_ok_per_s = ok_per_s  # the baseline is its own reference: ratio 1
    return Row(
        prefill=prefill,
        label=target.label,
        stage=target.stage,
        type=target.kind,
        count=target.count,
        path=target.path,
        generator=load.generator,
        duration_s=round(duration, 3),
        requests=requests,
        requests_per_s=round(requests / duration, 1),
        ok_per_s=round(ok_per_s, 1),
        numbers=len(numbers),
        numbers_per_s=round(len(numbers) / duration, 1),
        ratio_to_healthz=round(ok_per_s / healthz_ok_per_s, 3) if healthz_ok_per_s else None,
        healthz_ok_per_s=None if healthz_ok_per_s is None else round(healthz_ok_per_s, 1),
        healthz_around=None,
        latency_ms={key: None if value is None else round(value, 2) for key, value in load.latency_ms.items()},
        statuses={str(status): n for status, n in sorted(statuses.items())},
        socket_errors=load.socket_errors,
        bad_bodies=bad,
        error_codes=dict(error_codes.most_common()),
        duplicates=duplicates,
        worker_peak_mib_max=round(max(worker_peaks_kib) / 1024, 1) if worker_peaks_kib else None,
        worker_peak_mib_sum=round(sum(worker_peaks_kib) / 1024, 1) if worker_peaks_kib else None,
        server_cpu_percent=round(100 * server_cpu_seconds / duration, 1),
        client_cpu_percent=round(100 * load.client_cpu_seconds / duration, 1),
        idle_wait_s=None if idle_wait_s is None else round(idle_wait_s, 2),
        server=target.server,
    )


def with_baseline_around(row: Row, before: float, after: float) -> Row:
    """`row` with its ratio divided by the mean of the /healthz runs just before and just after it: a drift of
    the shared machine's speed over the row cancels out instead of landing on its ratio."""
    healthz = (before + after) / 2
    return replace(
        row,
        ratio_to_healthz=round(row.ok_per_s / healthz, 3) if healthz else None,
        healthz_ok_per_s=round(healthz, 1),
        healthz_around=[round(before, 1), round(after, 1)],
    )


def side_by_side(rows: list[Row]) -> list[Row]:
    """`rows` per prefill level with each row of the PostgreSQL server right after the same row of the main
    server (`/v3 int`, then `/v3-pg int`), otherwise in the order first measured."""
    first: dict[tuple, int] = {}
    for row in rows:
        first.setdefault((row.prefill, row.stage, row.type, row.count), len(first))
    levels = list(dict.fromkeys(row.prefill for row in rows))
    return sorted(
        rows,
        key=lambda row: (levels.index(row.prefill), first[(row.prefill, row.stage, row.type, row.count)], row.server),
    )


def median_rows(rows: list[Row]) -> list[Row]:
    """Per row of the plan (prefill level and label, in the order first measured), the round whose ratio is the
    median of its rounds (the lower middle one for an even number; for /healthz, of its rates), with
    `ratio_range` set when there are several and `duplicates` counted over every round, so that the table
    never hides one. A single round is its own median."""
    groups: dict[tuple[int | None, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.prefill, row.label), []).append(row)
    medians = []
    for rounds in groups.values():
        if rounds[0].stage == HEALTHZ:  # its own baseline, ratio 1 in every round: ranked by its rate
            ranked, span = sorted(rounds, key=lambda row: row.ok_per_s), None
        else:
            ranked = sorted(rounds, key=lambda row: row.ratio_to_healthz or 0.0)
            ratios = [row.ratio_to_healthz for row in ranked if row.ratio_to_healthz is not None]
            span = [ratios[0], ratios[-1]] if len(ratios) > 1 else None
        duplicates = sum(row.duplicates for row in rounds)
        medians.append(replace(ranked[(len(ranked) - 1) // 2], ratio_range=span, duplicates=duplicates))
    return medians
