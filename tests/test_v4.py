"""/v4 in one process: the HTTP contract, batches, refills, exhaustion, `flask init-shards`, config."""

from __future__ import annotations

import time

import pytest

from tests.support import finish_process
from tests.v4_support import SHARDS, assert_files_consistent, ledger_codes, shard_codes
from uniquerand import create_app
from uniquerand.config import ConfigError

EMPTY = "No available numbers. Shard is being refilled. Please retry shortly."


def get_retrying(client, path: str, deadline: float = 20.0):
    """GET, waiting out the documented shards-empty 503 while the background refill runs."""
    end = time.monotonic() + deadline
    while True:
        response = client.get(path)
        if response.status_code != 503 or response.json["code"] != "shards_empty" or time.monotonic() > end:
            return response
        time.sleep(0.02)


def test_v4_first_request_before_init_is_the_documented_503_then_recovers(client, instance_path):
    response = client.get("/v4/random")
    assert response.status_code == 503
    assert response.is_json
    assert response.json == {"error": EMPTY, "code": "shards_empty"}
    assert response.headers["Retry-After"] == "1"

    response = get_retrying(client, "/v4/random")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert set(response.json) == {"number", "shard"}
    assert response.json["shard"] in SHARDS["int"]
    assert isinstance(response.json["number"], int)
    assert response.json["number"] in shard_codes(instance_path / "v4", response.json["shard"], used=1)


def test_v4_float_number_from_a_float_shard(make_app):
    client = make_app(FLOAT_MIN=0, FLOAT_MAX=10, FLOAT_DECIMALS=2).test_client()
    body = get_retrying(client, "/v4/random?type=FLOAT").json
    assert body["shard"] in SHARDS["float"]
    assert 0 <= body["number"] < 10
    assert round(body["number"], 2) == body["number"]


@pytest.mark.parametrize("query", ["type=str", "type=int&type=float", "count=0", "count=abc", "count=1001"])
def test_v4_invalid_parameters_are_422(client, query):
    response = client.get(f"/v4/random?{query}")
    assert response.status_code == 422
    assert response.is_json
    assert response.json["code"] == "invalid_parameter"


def test_v4_claims_follow_the_draw_order_not_the_code_order(make_app, instance_path):
    app = make_app(V4_SHARD_SIZE=1000)
    assert app.test_cli_runner().invoke(args=["init-shards"]).exit_code == 0
    store = app.extensions["uniquerand"]["stores"]["v4"]
    served = [(issued.codes[0], issued.sources[0]) for issued in (store.issue("int") for _ in range(200))]
    for name in SHARDS["int"]:
        from_shard = [code for code, shard in served if shard == name]
        assert from_shard == shard_codes(instance_path / "v4", name)[: len(from_shard)]
    codes = [code for code, _ in served]
    assert codes != sorted(codes)


def test_v4_batch_is_distinct_and_names_each_shard(make_app, instance_path):
    client = make_app(V4_SHARD_SIZE=1000).test_client()
    body = get_retrying(client, "/v4/random?count=300").json
    assert set(body) == {"numbers", "shards"}
    assert len(body["numbers"]) == len(body["shards"]) == len(set(body["numbers"])) == 300
    for number, shard in zip(body["numbers"], body["shards"], strict=True):
        assert number in shard_codes(instance_path / "v4", shard, used=1)


def test_v4_batch_spans_both_shards_of_a_small_space(make_app):
    app = make_app(INT_MIN=1, INT_MAX=50, MAX_COUNT=30, V4_SHARD_SIZE=30, V4_REFILL_AT=0)
    store = app.extensions["uniquerand"]["stores"]["v4"]
    # 30 + 20 numbers in the two shards: two batches of 25 cannot both come from one shard.
    assert store.refiller.refill("int_shard_0.db", 30).added == 30
    assert store.refiller.refill("int_shard_1.db", 30).added == 20
    client = app.test_client()
    batches = [client.get("/v4/random?count=25").json for _ in range(2)]
    assert sorted(number for batch in batches for number in batch["numbers"]) == list(range(1, 51))
    assert any(len(set(batch["shards"])) == 2 for batch in batches)


def test_v4_batch_larger_than_what_remains_is_503_and_issues_nothing(make_app, instance_path):
    client = make_app(INT_MIN=1, INT_MAX=50, MAX_COUNT=50, V4_SHARD_SIZE=100).test_client()
    first = get_retrying(client, "/v4/random?count=45").json["numbers"]
    response = get_retrying(client, "/v4/random?count=6")
    assert response.status_code == 503
    assert response.is_json
    assert response.json["code"] == "insufficient_remaining"
    assert (response.json["requested"], response.json["remaining"]) == (6, 5)
    assert "Retry-After" not in response.headers
    rest = get_retrying(client, "/v4/random?count=5").json["numbers"]
    assert sorted(first + rest) == list(range(1, 51))


def test_v4_small_space_is_served_to_its_last_number_then_exhausted(make_app, instance_path):
    client = make_app(INT_MIN=1, INT_MAX=50, V4_SHARD_SIZE=1000).test_client()
    served = [get_retrying(client, "/v4/random").json["number"] for _ in range(50)]
    assert sorted(served) == list(range(1, 51))
    for _ in range(2):
        response = get_retrying(client, "/v4/random")
        assert response.status_code == 503
        assert response.is_json
        assert response.json == {"error": "All possible numbers have been used.", "code": "space_exhausted"}
        assert "Retry-After" not in response.headers
    assert_files_consistent(instance_path / "v4", "int")


def test_v4_single_numbers_fall_back_to_the_other_shard_when_the_drawn_one_is_empty(make_app):
    # Single claims are grouped per type, each group in a shard drawn at random: about half of them draw
    # int_shard_0, which never gets a number here (the ledger is full), and must be served by int_shard_1.
    app = make_app(INT_MIN=1, INT_MAX=60, V4_SHARD_SIZE=60, MAX_COUNT=10)
    app.extensions["uniquerand"]["stores"]["v4"].refiller.refill("int_shard_1.db", 60)
    client = app.test_client()
    responses = [client.get("/v4/random") for _ in range(60)]
    assert [response.status_code for response in responses] == [200] * 60
    assert {response.json["shard"] for response in responses} == {"int_shard_1.db"}
    assert sorted(response.json["number"] for response in responses) == list(range(1, 61))
    assert get_retrying(client, "/v4/random").json["code"] == "space_exhausted"  # once shard 0's refill gave up


def test_v4_low_shards_are_refilled_in_the_background_before_they_run_dry(make_app):
    app = make_app(V4_SHARD_SIZE=100, V4_REFILL_AT=100, MAX_COUNT=10)
    assert app.test_cli_runner().invoke(args=["init-shards"]).exit_code == 0
    client = app.test_client()
    numbers = [number for _ in range(10) for number in client.get("/v4/random?count=5").json["numbers"]]
    assert len(set(numbers)) == 50
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = client.get("/v4/stats").json["types"]["int"]
        if all(shard["available"] == 100 for shard in stats["shards"].values()):
            break
        time.sleep(0.02)
    assert [shard["available"] for shard in stats["shards"].values()] == [100, 100]
    assert stats["ledger"] == 250


def test_v4_init_shards_is_idempotent(make_app, instance_path):
    app = make_app(V4_SHARD_SIZE=200, MAX_COUNT=10)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["init-shards"])
    assert result.exit_code == 0, result.output
    for name in SHARDS["int"] + SHARDS["float"]:
        assert f"{name}: added 200, available 200" in result.output
    before = {kind: ledger_codes(instance_path / "v4", kind) for kind in SHARDS}

    again = runner.invoke(args=["init-shards"])
    assert again.exit_code == 0, again.output
    assert again.output.count("added 0, available 200") == 4
    assert {kind: ledger_codes(instance_path / "v4", kind) for kind in SHARDS} == before

    bigger = runner.invoke(args=["init-shards", "--size", "300"])
    assert bigger.exit_code == 0, bigger.output
    assert bigger.output.count("added 100, available 300") == 4
    for kind in SHARDS:
        assert_files_consistent(instance_path / "v4", kind)
        assert before[kind] < ledger_codes(instance_path / "v4", kind)
        pooled = [code for name in SHARDS[kind] for code in shard_codes(instance_path / "v4", name)]
        assert len(pooled) == len(ledger_codes(instance_path / "v4", kind)) == 600


def test_v4_init_shards_rejects_a_bad_size(runner):
    result = runner.invoke(args=["init-shards", "--size", "0"])
    assert result.exit_code == 2
    assert "--size" in result.output


def test_v4_stats_report_shards_and_ledgers(make_app):
    app = make_app(V4_SHARD_SIZE=100, INT_MIN=1, INT_MAX=1000, MAX_COUNT=10)
    assert app.test_cli_runner().invoke(args=["init-shards"]).exit_code == 0
    client = app.test_client()
    assert client.get("/v4/random?count=10").status_code == 200
    body = client.get("/v4/stats").json
    assert body["stage"] == "v4"
    ints = body["types"]["int"]
    assert (ints["issued"], ints["ledger"], ints["space_size"]) == (10, 200, 1000)
    assert ints["remaining"] == 990
    shards = ints["shards"]
    assert set(shards) == set(SHARDS["int"])
    assert sum(shard["available"] for shard in shards.values()) == 190
    assert sum(shard["served"] for shard in shards.values()) == 10
    for shard in shards.values():
        assert shard["refilling"] is False
        assert shard["last_refill"]["added"] == 100
        assert shard["last_refill"]["seconds"] >= 0


def test_v4_corrupt_shard_fails_closed_and_is_left_untouched(make_app, instance_path):
    folder = instance_path / "v4"
    folder.mkdir(parents=True)
    garbage = b"not a database, and never overwritten" * 100
    for name in SHARDS["int"]:
        (folder / name).write_bytes(garbage)
    response = make_app().test_client().get("/v4/random")
    assert response.status_code == 500
    assert response.is_json
    assert response.json["code"] == "store_corrupt"
    for name in SHARDS["int"]:
        assert (folder / name).read_bytes() == garbage


def test_v4_narrowed_range_never_serves_pooled_numbers_outside_it(make_app, instance_path):
    app = make_app(INT_MIN=1, INT_MAX=1000, V4_SHARD_SIZE=400, MAX_COUNT=10)
    assert app.test_cli_runner().invoke(args=["init-shards"]).exit_code == 0
    client = make_app(INT_MIN=1, INT_MAX=100, V4_SHARD_SIZE=400, MAX_COUNT=10).test_client()
    served = [get_retrying(client, "/v4/random").json["number"] for _ in range(100)]
    assert all(1 <= number <= 100 for number in served)
    assert len(set(served)) == len(served)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"V4_SHARD_SIZE": 0}, "V4_SHARD_SIZE must be at least 1"),
        ({"V4_SHARD_SIZE": "many"}, "V4_SHARD_SIZE must be an integer"),
        ({"V4_SHARD_SIZE": 100, "MAX_COUNT": 10, "V4_REFILL_AT": 101}, "V4_REFILL_AT must be at most 100"),
        ({"V4_SHARD_SIZE": 500}, "V4_SHARD_SIZE (500) must be at least MAX_COUNT (1000)"),
    ],
)
def test_v4_invalid_settings_name_the_setting(instance_path, settings, message):
    with pytest.raises(ConfigError) as raised:
        create_app({"INSTANCE_PATH": str(instance_path), **settings})
    assert message in str(raised.value)


def test_v4_refill_mark_defaults_to_half_the_shard_size(make_app, monkeypatch):
    monkeypatch.setenv("UNIQUERAND_V4_SHARD_SIZE", "3000")
    assert make_app().config["V4_REFILL_AT"] == 1500


def test_v4_a_lost_ledger_is_refused_not_refilled_from(make_app, instance_path):
    # Served numbers are only in the ledger once a shard's rows are gone: a new, empty ledger would pool
    # them again. Space 1..60: 40 served, then the ledger deleted.
    settings = {"INT_MIN": 1, "INT_MAX": 60, "V4_SHARD_SIZE": 1000, "MAX_COUNT": 100}
    app = make_app(**settings)
    app.extensions["uniquerand"]["stores"]["v4"].fill_shards(30)
    served = app.test_client().get("/v4/random?count=40").json["numbers"]
    assert len(served) == 40
    (instance_path / "v4" / "used_numbers_int.db").unlink()
    for suffix in ("-wal", "-shm"):
        (instance_path / "v4" / f"used_numbers_int.db{suffix}").unlink(missing_ok=True)
    response = make_app(**settings).test_client().get("/v4/random?count=10")
    assert response.status_code == 500, response.json
    assert response.json["code"] == "store_corrupt"
    assert "another ledger" in response.json["error"]


def hold_claim_locks(folder: str, ready, release) -> None:
    """Module-level target: a process that takes both int shards' claim locks and keeps them (stuck)."""
    import fcntl
    import os

    descriptors = [os.open(f"{folder}/int_shard_{index}.db.claim.lock", os.O_RDWR | os.O_CREAT) for index in (0, 1)]
    for descriptor in descriptors:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
    ready.set()
    release.wait(60)


def test_v4_a_stuck_claim_lock_is_a_503_for_every_waiting_request_never_a_hang(make_app, instance_path):
    import multiprocessing
    from concurrent.futures import ThreadPoolExecutor

    app = make_app(LOCK_TIMEOUT=0.5)
    app.extensions["uniquerand"]["stores"]["v4"].fill_shards(100)
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=hold_claim_locks, args=(str(instance_path / "v4"), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        # Eight requests at once: the shard writer waits for the lock, the requests behind it give up in time.
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda _: app.test_client().get("/v4/random"), range(8)))
    finally:
        release.set()
        finish_process(holder)
    assert [response.status_code for response in responses] == [503] * 8
    assert {response.json["code"] for response in responses} == {"store_busy"}
    assert all("Retry-After" in response.headers for response in responses)
    assert app.test_client().get("/v4/random").status_code == 200
