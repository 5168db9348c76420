"""The named-space rows of `flask bench --spaces N`: N spaces created on /v5 before the rows run (timed, with the
workers' memory before and after), a row drawing from one of them, and a row spread over up to SPREAD_LIMIT of
them (wrk picks a space at random per request).

Space i holds [i * SPAN, (i + 1) * SPAN): no two spaces share a number, so every named-space row of a server
keeps one duplicate ledger, as /v5/random's rows do."""

from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor

from uniquerand.bench import procfs
from uniquerand.bench.server import BenchError, Server
from uniquerand.bench.targets import Target

PREFIX = "bench-"
SPAN = 10**9
# The draws of the spread row: over the first this many spaces (the per-worker cache holds 1024).
SPREAD_LIMIT = 1000
CREATORS = 4
SPREAD_LUA = r"""
local spread = tonumber(os.getenv("BENCH_SPREAD"))
local template = os.getenv("BENCH_SPREAD_PATH")
function request()
  return wrk.format(nil, (string.gsub(template, "{i}", tostring(math.random(0, spread - 1)))))
end
"""


# `--verifiable`: a space of its own for the signed rows, past every bench-i space and within 2^53 (signed results
# carry their numbers as RFC 8785 JSON numbers), and the batch size of those rows.
SIGNED_SPACE = "bench-signed"
SIGNED_LOW = 10**15
SIGNED_BATCH = 100
# Each request of a keyed row with a key of its own: the run's prefix, wrk's thread, a counter.
KEYED_LUA = r"""
local prefix = os.getenv("BENCH_KEY_PREFIX")
local n = 0
function request()
  n = n + 1
  return wrk.format(nil, nil, {["Idempotency-Key"] = prefix .. "-" .. id .. "-" .. n})
end
"""


def verifiable_targets(server: Server, on: str) -> list[Target]:
    """The rows of `--verifiable`: /v5/random with a new Idempotency-Key per request, and a space's batches of
    SIGNED_BATCH unsigned, then signed (the signed row's ratio to the unsigned one is its cost)."""
    _put(server.port, SIGNED_SPACE, {"type": "int", "min": SIGNED_LOW, "max": SIGNED_LOW + SPAN - 1})
    batch = f"/v5/spaces/{SIGNED_SPACE}/random?count={SIGNED_BATCH}"
    return [
        Target("v5", "int", None, "/v5/random?type=int", on, variant="keyed"),
        Target("v5", "int", SIGNED_BATCH, batch, on),
        Target("v5", "int", SIGNED_BATCH, batch + "&signed=true", on, variant="signed"),
    ]


def space_targets(count: int, on: str) -> list[Target]:
    targets = [Target("v5", "int", None, f"/v5/spaces/{PREFIX}0/random", on)]
    if count > 1:
        spread = min(count, SPREAD_LIMIT)
        targets.append(Target("v5", "int", None, f"/v5/spaces/{PREFIX}{{i}}/random", on, spread=spread))
    return targets


def create_spaces(server: Server, count: int) -> dict:
    """Creates spaces bench-0 .. bench-{count-1} from a few clients at once; what it took, and the workers'
    resident memory before and after (an idle space should cost a worker nothing)."""
    before = _rss_kib(server)
    started = time.perf_counter()
    with ThreadPoolExecutor(CREATORS) as pool:
        list(pool.map(lambda i: _create(server.port, i), range(count)))
    seconds = time.perf_counter() - started
    return {
        "created": count,
        "seconds": round(seconds, 2),
        "worker_rss_kib": {"before": before, "after": _rss_kib(server)},
    }


def _create(port: int, index: int) -> None:
    _put(port, f"{PREFIX}{index}", {"type": "int", "min": index * SPAN, "max": (index + 1) * SPAN - 1})


def _put(port: int, name: str, definition: dict) -> None:
    body = json.dumps(definition)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("PUT", f"/v5/spaces/{name}", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = response.read()
    finally:
        connection.close()
    if response.status not in (200, 201):
        raise BenchError(f"PUT /v5/spaces/{name} answered {response.status}: {answer[:300]!r}")


def _rss_kib(server: Server) -> list[int]:
    return [kib for kib in map(procfs.rss_kib, server.worker_pids()) if kib is not None]
