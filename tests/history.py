"""A history of every request made during a fault test, and its checker (in the spirit of Jepsen's unique-ids
checker): per stage and type no number is served twice, a burned number never comes back, and availability
(the share of requests answered 200) per phase and stage.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

STAGES = ("v1", "v2", "v3", "v4", "v5")
KINDS = ("int", "float")


@dataclass(frozen=True)
class Operation:
    """One request. `outcome` is "ok" (a 200, with its numbers), "error" (any other status, with its JSON
    body) or "lost" (no complete answer: connection refused or dropped, timeout, unparsable body)."""

    stage: str
    kind: str
    phase: str
    sent: float
    answered: float
    outcome: str
    numbers: tuple = ()
    status: int | None = None
    body: dict | None = None
    headers: dict = field(default_factory=dict)
    detail: str = ""


class HistoryError(AssertionError):
    """The history breaks a promise; the message lists every violation."""


class History:
    """Thread-safe recorder of operations; `check()` asserts the promises over everything recorded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.operations: list[Operation] = []

    def record(self, operation: Operation) -> Operation:
        with self._lock:
            self.operations.append(operation)
        return operation

    def request(
        self, port: int, stage: str, kind: str, phase: str, count: int | None = None, timeout: float = 15.0
    ) -> Operation:
        """One GET /<stage>/random on a fresh connection (so that load spreads over every worker), recorded."""
        query = [f"type={kind}"] + ([f"count={count}"] if count else [])
        path = f"/{stage}/random?{'&'.join(query)}"
        sent = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            raw = response.read()
            status = response.status
            headers = {key.lower(): value for key, value in response.getheaders()}
            body = json.loads(raw)
        except (OSError, http.client.HTTPException, ValueError) as err:
            return self.record(Operation(stage, kind, phase, sent, time.monotonic(), "lost", detail=repr(err)))
        finally:
            connection.close()
        numbers = tuple(numbers_in(body))
        outcome = "ok" if status == 200 else "error"
        return self.record(
            Operation(stage, kind, phase, sent, time.monotonic(), outcome, numbers, status, body, headers)
        )

    def load(
        self,
        port: int,
        phase: str,
        requests: int,
        stages: Iterable[str] = STAGES,
        concurrency: int = 12,
        stop: threading.Event | None = None,
        timeout: float = 15.0,
    ) -> None:
        """`requests` requests spread round-robin over the stages and both types (every fifth one a batch of 3
        on the stages that take `count`), from `concurrency` threads; ends early once `stop` is set."""
        stages = list(stages)
        plan = []
        for index in range(requests):
            stage = stages[index % len(stages)]
            kind = KINDS[(index // len(stages)) % 2]
            count = 3 if stage != "v1" and index % 5 == 4 else None
            plan.append((stage, kind, count))

        def one(item: tuple) -> None:
            if stop is None or not stop.is_set():
                self.request(port, item[0], item[1], phase, item[2], timeout)

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, plan))

    def of(self, phase: str | None = None, stage: str | None = None) -> list[Operation]:
        with self._lock:
            operations = list(self.operations)
        return [op for op in operations if phase in (None, op.phase) and stage in (None, op.stage)]

    def availability(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(phase, stage) -> (requests answered 200, requests), in the order the phases ran."""
        result: dict[tuple[str, str], list[int]] = {}
        for op in sorted(self.of(), key=lambda op: op.sent):
            counts = result.setdefault((op.phase, op.stage), [0, 0])
            counts[0] += op.outcome == "ok"
            counts[1] += 1
        return {key: (ok, total) for key, (ok, total) in result.items()}

    def violations(self) -> list[str]:
        """Every broken promise, per stage and type: a number in two 200s, or a burned number (seen in a
        failed or lost response) that was also served with a 200."""
        problems = []
        served: dict[tuple[str, str], Counter] = defaultdict(Counter)
        burned: dict[tuple[str, str], set] = defaultdict(set)
        for op in self.of():
            if op.outcome == "ok":
                served[op.stage, op.kind].update(op.numbers)
            else:
                burned[op.stage, op.kind].update(op.numbers)
        for (stage, kind), counts in sorted(served.items()):
            twice = sorted(number for number, seen in counts.items() if seen > 1)
            if twice:
                problems.append(f"/{stage} {kind}: {len(twice)} numbers served twice, e.g. {twice[:5]}")
            back = sorted(burned[stage, kind] & counts.keys())
            if back:
                problems.append(f"/{stage} {kind}: {len(back)} burned numbers served with a 200, e.g. {back[:5]}")
        return problems

    def check(self) -> None:
        problems = self.violations()
        if problems:
            raise HistoryError("; ".join(problems))

    def summary(self) -> str:
        lines = ["availability (200s / requests) per phase and stage:"]
        for (phase, stage), (ok, total) in self.availability().items():
            lines.append(f"  {phase:<24} /{stage:<3} {ok:>4}/{total:<4} {100 * ok / total:6.1f}%")
        statuses = Counter((op.status, (op.body or {}).get("code")) for op in self.of() if op.outcome == "error")
        lost = sum(op.outcome == "lost" for op in self.of())
        lines.append(f"  errors by status and code: {dict(statuses)}; lost: {lost}")
        return "\n".join(lines)


def numbers_in(body: object) -> list:
    """The numbers a response body carries (`number` or `numbers`), whatever its status."""
    if not isinstance(body, dict):
        return []
    if "numbers" in body and isinstance(body["numbers"], list):
        return list(body["numbers"])
    return [body["number"]] if "number" in body else []
