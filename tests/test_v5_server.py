"""/v5 under real gunicorn: several workers leasing from one counter, kill -9 and restart, a small space's end."""

from __future__ import annotations

import threading
import time

from tests.support import hammer, v5_store
from uniquerand.numbers import NumberSpace


def numbers_of(results: list[tuple]) -> list:
    numbers = []
    for status, body in results:
        if status == 200:
            numbers.extend(body.get("numbers", [body.get("number")]))
    return numbers


def small_space_env(high: int, block: int) -> dict[str, str]:
    return {"UNIQUERAND_INT_MIN": "1", "UNIQUERAND_INT_MAX": str(high), "UNIQUERAND_V5_BLOCK_SIZE": str(block)}


def stats_after_stop(instance_path, high: int) -> dict:
    spaces = {"int": NumberSpace("int", 1, high), "float": NumberSpace("float", 0, 10**14 - 1, 6)}
    return v5_store(instance_path / "v5", spaces, block_size=1).stats()["int"]


def test_v5_server_workers_never_share_a_number(make_server, instance_path):
    # Small blocks so that every worker leases many times while the others serve.
    server = make_server(env=small_space_env(3000, 20), workers=3, threads=4)
    paths = ["/v5/random"] * 600 + ["/v5/random?count=25"] * 40

    results = hammer(server.port, paths, concurrency=16)

    assert all(status == 200 for status, _ in results)
    numbers = numbers_of(results)
    assert len(numbers) == 1600
    assert len(set(numbers)) == 1600
    assert all(1 <= n <= 3000 for n in numbers)
    # Each worker's count is fixed once the load is over, so distinct nonzero counts are distinct workers.
    # Concurrent probes on fresh connections: an idle server may hand a dozen sequential ones to one worker.
    probes = hammer(server.port, ["/v5/stats"] * 240, concurrency=8)
    served = {body["types"]["int"]["served_by_this_process"] for status, body in probes if status == 200}
    assert sum(1 for count in served if count) >= 2, "the load did not reach several workers"
    assert sum(served) <= 1600

    server.stop()
    stats = stats_after_stop(instance_path, 3000)
    # A graceful stop returns every lease: what was not served is a known gap, nothing is unaccounted.
    assert stats["unaccounted"] == 0
    assert stats["counter"] - stats["skipped"] == 1600


def test_v5_server_kill9_then_restart_never_repeats(make_server, instance_path):
    env = small_space_env(4000, 50)
    server = make_server(env=env, workers=3, threads=4)
    first: list[tuple] = []
    load = threading.Thread(target=lambda: first.extend(hammer(server.port, ["/v5/random"] * 800, 16, 10)))
    load.start()
    deadline = time.monotonic() + 20
    # Kill once the workers have leased a few blocks: the load is then surely under way.
    while time.monotonic() < deadline and server.get("/v5/stats")[1]["types"]["int"]["counter"] < 200:
        time.sleep(0.02)
    server.kill9()
    load.join(timeout=60)
    assert not load.is_alive()
    answered = [body for status, body in first if status == 200]
    assert answered, "the load must have been under way when the server was killed"
    assert len(answered) < 800, "the kill must have interrupted the load"

    restarted = make_server(env=env, workers=3, threads=4)
    second = hammer(restarted.port, ["/v5/random"] * 300 + ["/v5/random?count=10"] * 30, concurrency=16)

    assert all(status == 200 for status, _ in second)
    before, after = numbers_of(first), numbers_of(second)
    assert before, "nothing was served before the kill"
    assert len(after) == 600
    assert len(set(before + after)) == len(before) + len(after)
    stats = restarted.get("/v5/stats")[1]["types"]["int"]
    assert stats["unaccounted"] >= len(after)


def test_v5_server_small_space_serves_every_number_then_503(make_server):
    # Blocks larger than the space, several workers: each lease is capped near the end of the space.
    server = make_server(env=small_space_env(50, 1000), workers=3, threads=2)

    results = hammer(server.port, ["/v5/random"] * 120, concurrency=8)
    # A worker that still holds leased numbers serves them to the next requests it receives.
    for _ in range(10):
        if len(numbers_of(results)) == 50:
            break
        results += hammer(server.port, ["/v5/random"] * 30, concurrency=8)

    assert sorted(numbers_of(results)) == list(range(1, 51))
    refusals = [body for status, body in results if status != 200]
    assert refusals
    # While a worker still held numbers, the others said so (and were retried); then the end.
    assert {body["code"] for body in refusals} <= {"held_elsewhere", "space_exhausted"}
    assert server.get("/v5/random")[1]["code"] == "space_exhausted"


def test_v5_server_concurrent_batches_are_distinct_and_refused_whole(make_server):
    # 30 batches of 40 ask for more than the 1000 numbers of the space: the last ones must be refused.
    server = make_server(env=small_space_env(1000, 30), workers=3, threads=4)

    results = hammer(server.port, ["/v5/random?count=40"] * 30, concurrency=12)

    served = [body["numbers"] for status, body in results if status == 200]
    refused = [(status, body) for status, body in results if status != 200]
    numbers = [n for batch in served for n in batch]
    assert all(len(batch) == 40 for batch in served)
    assert len(set(numbers)) == len(numbers) <= 1000
    assert all(1 <= n <= 1000 for n in numbers)
    assert refused
    for status, body in refused:
        assert status == 503
        # held_elsewhere: the batch fits in what is left only counting other workers' leases (retry).
        assert body["code"] in ("insufficient_remaining", "space_exhausted", "held_elsewhere")
        if body["code"] == "insufficient_remaining":
            assert body["remaining"] < 40


def test_v5_workers_prepare_key_and_tables_at_start(make_server, instance_path):
    # Before any /v5 request: the key is made and the first request finds its permutation built.
    server = make_server(workers=2, threads=2)

    assert (instance_path / "v5" / "key").stat().st_size == 32
    assert server.get("/v5/stats")[1]["types"]["int"]["counter"] == 0  # nothing leased by preparing


def test_v5_a_worker_that_cannot_prepare_still_starts_and_answers_json(make_server, instance_path):
    (instance_path / "v5").mkdir(parents=True)
    (instance_path / "v5" / "key").write_bytes(b"too short")

    server = make_server(workers=2, threads=2)

    assert server.get("/healthz")[0] == 200
    status, body, _ = server.get("/v5/random")
    assert status == 500 and body["code"] == "store_key_invalid"
