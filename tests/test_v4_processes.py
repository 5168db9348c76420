"""/v4 across real processes: atomic claims, concurrent refills, a refill killed mid-way, gunicorn kill -9."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tests.support import hammer
from tests.v4_support import (
    SHARDS,
    assert_files_consistent,
    claim_many,
    claim_retrying,
    ledger_codes,
    make_store,
    refill_forever,
    refill_shards,
    rows,
    shard_codes,
)

SPAWN = multiprocessing.get_context("spawn")
# A few thousand numbers and small shards: refills run all through the load, collisions are likely.
SMALL = {"INT_MIN": 1, "INT_MAX": 4000, "V4_SHARD_SIZE": 300, "V4_REFILL_AT": 150, "MAX_COUNT": 10}


def run_processes(target, argument_lists: list[tuple], timeout: float = 60.0) -> None:
    processes = [SPAWN.Process(target=target, args=arguments) for arguments in argument_lists]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout)
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(5)
    assert [process.exitcode for process in processes] == [0] * len(processes)


def test_v4_claims_from_threads_of_several_processes_are_unique_and_none_is_lost(instance_path, tmp_path):
    outputs = [tmp_path / f"claims_{index}.txt" for index in range(3)]
    run_processes(claim_many, [(str(instance_path), SMALL, 400, 4, str(out)) for out in outputs])
    claimed = [int(line) for out in outputs for line in out.read_text().split()]
    assert len(claimed) == 1200
    assert len(set(claimed)) == 1200
    folder = instance_path / "v4"
    assert_files_consistent(folder, "int")
    # No lost claim: every row marked used was answered to exactly one caller.
    used = [code for name in SHARDS["int"] for code in shard_codes(folder, name, used=1)]
    assert sorted(used) == sorted(claimed)


def test_v4_threads_of_one_store_claim_each_number_once(make_app, instance_path):
    from concurrent.futures import ThreadPoolExecutor

    store = make_app(**SMALL).extensions["uniquerand"]["stores"]["v4"]
    with ThreadPoolExecutor(8) as pool:
        claimed = [code for batch in pool.map(lambda _: claim_retrying(store, "int", 5), range(200)) for code in batch]
    assert len(claimed) == len(set(claimed)) == 1000
    used = [code for name in SHARDS["int"] for code in shard_codes(instance_path / "v4", name, used=1)]
    assert sorted(used) == sorted(claimed)


def test_v4_concurrent_refills_from_two_processes_never_share_a_number(instance_path):
    # 2 x 20,000 of a space of 50,000: the two processes' random draws collide often.
    settings = {"INT_MIN": 1, "INT_MAX": 50_000, "V4_SHARD_SIZE": 20_000, "MAX_COUNT": 10}
    start = SPAWN.Barrier(2)
    # Both processes refill both shards at once, in opposite orders.
    run_processes(
        refill_shards,
        [
            (str(instance_path), settings, SHARDS["int"], 20_000, start),
            (str(instance_path), settings, SHARDS["int"][::-1], 20_000, start),
        ],
    )
    folder = instance_path / "v4"
    assert_files_consistent(folder, "int")
    # At most one refill per shard at a time: no shard was filled to its target twice over.
    assert [len(shard_codes(folder, name, used=0)) for name in SHARDS["int"]] == [20_000, 20_000]
    assert len(ledger_codes(folder, "int")) == 40_000


def test_v4_a_refill_killed_mid_way_leaves_no_number_in_two_places(instance_path):
    folder = instance_path / "v4"
    settings = {"V4_SHARD_SIZE": 1000, "MAX_COUNT": 10}
    for _ in range(3):
        before = _reserved_not_pooled(folder) or 0
        process = SPAWN.Process(target=refill_forever, args=(str(instance_path), settings, 10_000_000))
        process.start()
        try:
            # Kill while ledger and shard disagree: numbers reserved and not yet pooled (or, were a shard
            # written before its ledger, pooled and not yet reserved).
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _reserved_not_pooled(folder) in (None, before):
                time.sleep(0.002)
            os.kill(process.pid, signal.SIGKILL)
        finally:
            process.join(10)
        assert process.exitcode == -signal.SIGKILL
        assert_files_consistent(folder, "int")
    # Reserved-but-never-pooled numbers are lost, not re-issued: later refills draw around them.
    store = make_store(str(instance_path), settings)
    served = set(claim_retrying(store, "int", 10))
    assert store.refiller.refill("int_shard_1.db", 5000, wait=10) is not None
    assert_files_consistent(folder, "int")
    unused = {code for name in SHARDS["int"] for code in shard_codes(folder, name, used=0)}
    assert not served & unused


def _reserved_not_pooled(folder: Path) -> int | None:
    try:
        ledger = rows(folder / "used_numbers_int.db", "SELECT value FROM meta WHERE key = 'count'")
        pooled = sum(
            rows(folder / name, "SELECT COUNT(*) FROM pool")[0][0] for name in SHARDS["int"] if (folder / name).exists()
        )
    except sqlite3.Error:
        return None
    return ledger[0][0] - pooled if ledger else None


def test_v4_under_gunicorn_survives_kill_9_and_restart_without_repeats(make_server, instance_path):
    env = {
        "UNIQUERAND_INT_MIN": "1",
        "UNIQUERAND_INT_MAX": "3000",
        "UNIQUERAND_V4_SHARD_SIZE": "200",
        "UNIQUERAND_V4_REFILL_AT": "100",
        "UNIQUERAND_MAX_COUNT": "5",
    }
    server = make_server(env=env, workers=3, threads=4)
    results: list[tuple] = []
    paths = ["/v4/random", "/v4/random?count=5"] * 12

    def load() -> None:
        # Rounds of 24 requests until the server is gone (or a bound is reached).
        for _ in range(100):
            answers = hammer(server.port, paths, concurrency=12, timeout=10)
            results.extend(answers)
            if all(status is None for status, _ in answers):
                return

    loader = threading.Thread(target=load)
    loader.start()
    deadline = time.monotonic() + 30
    while len(results) < 200 and loader.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    answered_before_kill = len(results)
    server.kill9()
    loader.join(60)
    assert answered_before_kill >= 200
    assert not loader.is_alive()
    first = _numbers(results)
    assert_files_consistent(instance_path / "v4", "int")

    restarted = make_server(env=env, workers=3, threads=4)
    second = _numbers(hammer(restarted.port, paths * 8, concurrency=12))
    assert first and second
    everything = first + second
    assert len(everything) == len(set(everything))
    assert all(1 <= number <= 3000 for number in everything)
    body = restarted.get("/v4/stats")[1]
    assert body["types"]["int"]["issued"] >= len(everything)


def _numbers(results: list[tuple]) -> list[int]:
    numbers = []
    for status, body in results:
        if status == 200:
            numbers += body["numbers"] if "numbers" in body else [body["number"]]
        else:
            assert status is None or (status == 503 and body["code"] == "shards_empty"), (status, body)
    return numbers


@pytest.mark.parametrize(
    "worker_class", ["uniquerand.worker.FairGeventWorker", "uniquerand.worker.BalancedThreadWorker"]
)
def test_v4_fresh_server_answers_its_first_request_of_each_type(make_server, instance_path, worker_class):
    # Default pool sizes: the workers top up the empty pools as they start, before they serve.
    server = make_server(env={"UNIQUERAND_WORKER_CLASS": worker_class}, workers=3, threads=2)
    for path, kind in [("/v4/random?type=float", float), ("/v4/random", int)]:
        status, body, _ = server.get(path)
        assert status == 200, body
        assert type(body["number"]) is kind
    types = server.get("/v4/stats")[1]["types"]
    for kind, served in [("int", 1), ("float", 1)]:
        shards = types[kind]["shards"]
        assert sum(shard["served"] for shard in shards.values()) == served
        # Each shard was filled once, by one worker: the others found it full.
        assert sorted(shard["last_refill"]["added"] for shard in shards.values()) == [10000, 10000]


@pytest.mark.parametrize("refill_at", [900, 0])
def test_v4_server_started_on_low_pools_tops_them_up_before_serving(make_server, filled_shards, refill_at):
    # V4_REFILL_AT=0 refills only empty shards: these are, at the start, for a new folder's int shards.
    settings = {"V4_SHARD_SIZE": 1000, "V4_REFILL_AT": refill_at, "MAX_COUNT": 1000}
    if refill_at:
        filled_shards(100, **settings)  # as a server stopped with its pools low leaves them
    server = make_server(env={f"UNIQUERAND_{key}": str(value) for key, value in settings.items()}, workers=2)
    status, body, _ = server.get("/v4/random?count=1000")
    assert status == 200, body
    assert len(set(body["numbers"])) == 1000
