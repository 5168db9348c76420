"""What a load run yields, whichever generator ran it, and how the recorded responses are read back."""

from __future__ import annotations

import json
import resource
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LoadResult:
    """One closed-loop run against one path. Bodies are read from `bodies_dir` (`STATUS BODY` lines)."""

    generator: str
    duration: float
    latency_ms: dict[str, float | None]  # p50, p95, p99, max over every response
    socket_errors: dict[str, int]
    client_cpu_seconds: float
    bodies_dir: Path


def recorded_responses(bodies_dir: Path) -> Iterator[tuple[int, str]]:
    """(status, body) of every response the generator recorded, in no particular order."""
    for path in sorted(bodies_dir.glob("bodies-*.txt")):
        with open(path, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                status, _, body = line.rstrip("\n").partition(" ")
                if status.isdigit():
                    yield int(status), body


def numbers_in(body: str) -> list | None:
    """The numbers of a successful body (`number` or `numbers`), or None when it holds neither."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict):
        if isinstance(data.get("numbers"), list):
            return data["numbers"]
        if "number" in data:
            return [data["number"]]
    return None


def children_cpu_seconds() -> float:
    """CPU used by this process's waited-for children: the difference around a run is the generator's."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk_path() -> str | None:
    return shutil.which("wrk")
