"""End to end under a real gunicorn (several workers and threads): never twice, also across kill -9."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest

from tests.support import hammer, v3_codes

STAGES = ["v1", "v2", "v3"]
WORKER_CLASSES = ["uniquerand.worker.FairGeventWorker", "uniquerand.worker.BalancedThreadWorker"]
# Small spaces, so that a store that loses an update draws the same number twice almost at once.
SMALL_SPACE = {
    "UNIQUERAND_INT_MIN": "1",
    "UNIQUERAND_INT_MAX": "3000",
    "UNIQUERAND_FLOAT_MIN": "0",
    "UNIQUERAND_FLOAT_MAX": "3",
    "UNIQUERAND_FLOAT_DECIMALS": "3",
    # /v3 settles its recent codes every few dozen numbers, under the same load.
    "UNIQUERAND_V3_SETTLE_AT": "40",
}


def served(results, key: str = "number") -> list:
    return [body[key] for status, body in results if status == 200]


def stored_codes(instance_path, stage: str, kind: str) -> set[int]:
    """What the stage's store holds, read straight from its file (not through the app)."""
    if stage in ("v1", "v2"):
        return set(json.loads((instance_path / stage / "used_numbers.json").read_text())[kind])
    return v3_codes(instance_path / stage / "numbers.db", kind)


@pytest.mark.parametrize(
    "worker_class", ["uniquerand.worker.FairGeventWorker", "uniquerand.worker.BalancedThreadWorker"]
)
@pytest.mark.parametrize("stage", STAGES)
def test_concurrent_clients_over_every_worker_never_share_a_number(make_server, stage, worker_class):
    # Both worker classes: the gevent worker (the default) and the thread worker.
    server = make_server(env={**SMALL_SPACE, "UNIQUERAND_WORKER_CLASS": worker_class}, workers=3, threads=4)
    paths = [f"/{stage}/random" if index % 3 else f"/{stage}/random?type=float" for index in range(900)]
    results = hammer(server.port, paths, concurrency=16)
    assert Counter(status for status, _ in results) == {200: 900}, [body for status, body in results if status != 200]
    ints = [number for number in served(results) if type(number) is int]
    floats = [number for number in served(results) if type(number) is float]
    assert len(ints) == len(set(ints)) == 600
    assert len(floats) == len(set(floats)) == 300
    stats = server.get(f"/{stage}/stats")[1]["types"]
    assert (stats["int"]["issued"], stats["float"]["issued"]) == (600, 300)


@pytest.mark.parametrize("stage", STAGES)
def test_kill_9_mid_load_then_restart_never_repeats_a_number(make_server, instance_path, stage):
    server = make_server(env=SMALL_SPACE, workers=3, threads=4)
    results: list = []
    load = threading.Thread(target=lambda: results.extend(hammer(server.port, [f"/{stage}/random"] * 1500, 16, 10)))
    load.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and server.get(f"/{stage}/stats")[1]["types"]["int"]["issued"] < 200:
        time.sleep(0.02)
    server.kill9()
    load.join(60)
    before = served(results)
    assert len(before) >= 200, "the load must have been under way when the server was killed"
    assert len(before) < 1500, "the kill must have interrupted the load"
    # Every number a client received was durable before its response: it is in the store after the crash.
    assert set(before) <= stored_codes(instance_path, stage, "int")

    restarted = make_server(env=SMALL_SPACE, workers=3, threads=4)
    results = hammer(restarted.port, [f"/{stage}/random"] * 600, concurrency=16)
    after = served(results)
    assert len(after) == 600, [body for status, body in results if status != 200]
    everything = before + after
    assert len(everything) == len(set(everything))
    assert restarted.get(f"/{stage}/stats")[0] == 200


@pytest.mark.parametrize("stage", STAGES)
def test_small_space_is_served_to_the_last_number_across_workers(make_server, stage):
    server = make_server(env={"UNIQUERAND_INT_MIN": "1", "UNIQUERAND_INT_MAX": "50"}, workers=3, threads=2)
    results = hammer(server.port, [f"/{stage}/random"] * 70, concurrency=8)
    assert sorted(served(results)) == list(range(1, 51))
    refused = [(status, body) for status, body in results if status != 200]
    assert len(refused) == 20
    assert all(status == 503 for status, _ in refused)
    assert all("all possible numbers have been used" in body["error"].lower() for _, body in refused)
