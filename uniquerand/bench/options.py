"""What `flask bench` is asked to do (`BenchOptions`, from the command line) and what it hands back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from uniquerand.bench.capacity import Capacity
from uniquerand.bench.cost import CostRow
from uniquerand.bench.results import Row


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
    # Named spaces made on /v5 before the rows (0: none, and no named-space rows).
    spaces: int = 0
    # Rows of /v5's verifiable draws: a new Idempotency-Key per request, and signed batches against unsigned ones.
    verifiable: bool = False
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
    # A second server keeps /v3-/v5 in this PostgreSQL database (one the bench may fill), or with `postgres`
    # in a throwaway cluster the bench starts; its rows are labelled /v3-pg etc.
    database_url: str | None = None
    postgres: bool = False
    # What each PostgreSQL row costs the database server, and the ceiling of one server (bench.cost).
    cost: bool = False


@dataclass
class BenchOutcome:
    rows: list[Row]  # every round's
    medians: list[Row]  # per row, its median round (see results.median_rows), side by side (results.side_by_side)
    json_path: Path
    chart_path: Path | None
    duplicates: int
    warnings: list[str]
    costs: list[CostRow] = field(default_factory=list)
    capacity: Capacity | None = None
