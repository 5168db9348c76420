"""What to measure: /healthz, then every stage the server's index lists, per type, singles and batches."""

from __future__ import annotations

import time
from dataclasses import dataclass

from uniquerand.bench.server import BenchError, Server, get_json

HEALTHZ = "healthz"


@dataclass(frozen=True)
class Target:
    stage: str  # "healthz" for the baseline, else the stage's name ("v3")
    kind: str | None  # "int" / "float"; None for the baseline
    count: int | None  # numbers asked per request for a batch row, None for single numbers
    path: str
    # Which of the bench's servers serves the row: "" for the main one, "pg" for the one on PostgreSQL.
    server: str = ""
    # A row spread over this many named spaces: `path` holds `{i}`, which each request replaces (see spaces.py).
    spread: int = 0
    # "keyed": each request with an Idempotency-Key of its own; "signed": the path asks for signed draws.
    variant: str = ""

    @property
    def named_space(self) -> bool:
        return "/spaces/" in self.path

    @property
    def label(self) -> str:
        suffix = f"-{self.server}" if self.server else ""
        if self.stage == HEALTHZ:
            return f"/healthz{suffix}"
        batch = f" x{self.count}" if self.count else ""
        variant = f" {self.variant}" if self.variant else ""
        if self.named_space:
            spaces = f"{self.spread} spaces" if self.spread else "1 space"
            return f"/{self.stage}{suffix} {self.kind}{batch} {spaces}{variant}"
        return f"/{self.stage}{suffix} {self.kind}{batch}{variant}"

    @property
    def ledger(self) -> tuple[str, str] | None:
        """Numbers of rows with the same ledger must all differ from each other (each server's stores are
        their own: the same number from /v3 and /v3-pg is no duplicate)."""
        if self.stage == HEALTHZ:
            return None
        spaces = " spaces" if self.named_space else ""
        return ((f"{self.stage}-{self.server}" if self.server else self.stage) + spaces, self.kind)


def listed_stages(server: Server) -> list[dict]:
    """The stages in the server's JSON index (`GET /`), each with its prefix and links."""
    status, index = get_json(server.port, "/")
    if status != 200 or not isinstance(index, dict) or "stages" not in index:
        raise BenchError(f"GET / answered {status} without a list of stages; is this uniquerand?")
    return index["stages"]


RETRYABLE = {"shards_empty", "store_busy", "store_unavailable", "retries_exhausted"}


def accepts_count(server: Server, random_path: str, kind: str) -> tuple[bool, list]:
    """Whether the stage answers `count=1` with a batch; also returns the number the probe was given,
    which the caller records with the stage's others (it counts for duplicates)."""
    for _ in range(50):
        status, body = get_json(server.port, f"{random_path}?type={kind}&count=1")
        # A stage that is warming up (/v4 filling its shards) answers a retryable 503: ask again.
        if status != 503 or not isinstance(body, dict) or body.get("code") not in RETRYABLE:
            break
        time.sleep(0.1)
    if status == 200 and isinstance(body, dict) and isinstance(body.get("numbers"), list):
        return True, body["numbers"]
    return False, [body["number"]] if status == 200 and isinstance(body, dict) and "number" in body else []


def on_postgres(entry: dict) -> bool:
    """Whether the index describes the stage's store as PostgreSQL (with DATABASE_URL set: /v3, /v4, /v5)."""
    return "PostgreSQL" in entry.get("store", "")


def plan(
    server: Server, stages: list[str] | None, kinds: list[str], count: int | None, on: str = ""
) -> tuple[list[Target], dict[tuple[str, str], list]]:
    """The rows to run, in order, and the numbers the probes received per ledger (see `Target.ledger`).

    `on="pg"`: the server keeps its state in PostgreSQL; its rows are the stages whose store is there."""
    listed = listed_stages(server)
    names = [entry["prefix"].strip("/") for entry in listed]
    if stages:
        unknown = sorted(set(stages) - set(names))
        if unknown:
            raise BenchError(f"Unknown stage(s) {', '.join(unknown)}; the server lists {', '.join(names)}.")
    targets = [Target(HEALTHZ, None, None, "/healthz", on)]
    batches: list[Target] = []
    probed: dict[tuple[str, str], list] = {}
    for entry, name in zip(listed, names, strict=True):
        if (stages and name not in stages) or (on == "pg" and not on_postgres(entry)):
            continue
        random_path = entry["links"]["random"].split("?")[0]
        for kind in kinds:
            single = Target(name, kind, None, f"{random_path}?type={kind}", on)
            targets.append(single)
            if count:
                batch, numbers = accepts_count(server, random_path, kind)
                probed[single.ledger] = numbers
                if batch:
                    batches.append(Target(name, kind, count, f"{random_path}?type={kind}&count={count}", on))
    if on == "pg" and len(targets) == 1:
        raise BenchError(
            "None of the selected stages keeps its state in PostgreSQL on this server (with a database: "
            + ", ".join(entry["prefix"].strip("/") for entry in listed if on_postgres(entry))
            + ")."
        )
    return targets + batches, probed
