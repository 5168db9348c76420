"""/v5 in one process and in real child processes: serving, batches, exhaustion, the key, stats."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path

import pytest

from tests.support import REPO, v5_store
from tests.v4_support import rows
from uniquerand import create_app
from uniquerand.aes_permutation import AesRadixPermutation
from uniquerand.config import ConfigError
from uniquerand.permutation import BinaryFeistelPermutation, RadixFeistelPermutation
from uniquerand.storage.leases import Block, Leases

SMALL = {"INT_MIN": 1, "INT_MAX": 50, "V5_BLOCK_SIZE": 1000}
# The tweak /v5 gives the permutation of SMALL's int space (kind, low, high, decimals).
SMALL_TWEAK = b"int:1:50:0"


def assert_json_error(response, status: int, code: str) -> dict:
    assert response.status_code == status
    assert response.mimetype == "application/json"
    assert response.json["code"] == code
    assert response.json["error"]
    return response.json


def take(client, path: str, expected: int) -> list:
    numbers = []
    while len(numbers) < expected:
        response = client.get(path)
        assert response.status_code == 200, response.json
        numbers.extend(response.json.get("numbers", [response.json.get("number")]))
    return numbers


def take_until_exhausted(client) -> list[int]:
    numbers = []
    while (response := client.get("/v5/random")).status_code == 200:
        numbers.append(response.json["number"])
    assert_json_error(response, 503, "space_exhausted")
    return numbers


def fingerprint_rows(instance_path: Path) -> list[str]:
    """The names of the meta rows holding the key's fingerprint: the name says the permutation."""
    query = "SELECT name FROM meta WHERE name LIKE 'key_fingerprint%'"
    return [name for (name,) in rows(instance_path / "v5" / "counters.db", query)]


def rename_fingerprint_row(instance_path: Path, name: str) -> None:
    connection = sqlite3.connect(instance_path / "v5" / "counters.db")
    try:
        with connection:
            connection.execute("UPDATE meta SET name = ? WHERE name LIKE 'key_fingerprint%'", (name,))
    finally:
        connection.close()


def test_v5_serves_ints_and_floats_inside_their_spaces(client):
    ints = take(client, "/v5/random", 20)
    floats = take(client, "/v5/random?type=FLOAT", 20)

    assert all(isinstance(n, int) and 0 <= n <= 4294967295 for n in ints)
    assert all(isinstance(n, float) and 0 <= n < 100000000 for n in floats)
    assert len(set(ints)) == len(set(floats)) == 20


def test_v5_rejects_an_invalid_type(client):
    body = assert_json_error(client.get("/v5/random?type=decimal"), 422, "invalid_parameter")

    assert body["parameter"] == "type"


def test_v5_serves_a_small_space_to_its_last_number_then_503(make_app):
    client = make_app(**SMALL).test_client()

    numbers = take(client, "/v5/random", 50)

    assert sorted(numbers) == list(range(1, 51))
    for _ in range(2):
        response = client.get("/v5/random")
        assert_json_error(response, 503, "space_exhausted")
        assert "Retry-After" not in response.headers


@pytest.mark.parametrize("count", ["0", "-1", "1001", "abc", "2.5", ""])
def test_v5_batch_rejects_a_bad_count(client, count):
    body = assert_json_error(client.get(f"/v5/random?count={count}"), 422, "invalid_parameter")

    assert body["parameter"] == "count"


def test_v5_batch_rejects_a_repeated_count(client):
    assert_json_error(client.get("/v5/random?count=1&count=2"), 422, "invalid_parameter")


def test_v5_batch_larger_than_the_rest_is_refused_and_issues_nothing(make_app):
    client = make_app(**SMALL).test_client()
    first = client.get("/v5/random?count=40").json["numbers"]

    body = assert_json_error(client.get("/v5/random?count=11"), 503, "insufficient_remaining")
    rest = client.get("/v5/random?count=10").json["numbers"]

    assert (body["requested"], body["remaining"]) == (11, 10)
    assert sorted(first + rest) == list(range(1, 51))
    assert_json_error(client.get("/v5/random?count=2"), 503, "insufficient_remaining")


def test_v5_batches_larger_than_a_block_are_distinct(make_app):
    client = make_app(INT_MIN=1, INT_MAX=3000, V5_BLOCK_SIZE=7).test_client()

    numbers = [n for _ in range(3) for n in client.get("/v5/random?count=1000").json["numbers"]]

    assert sorted(numbers) == list(range(1, 3001))


def test_v5_single_numbers_follow_the_counter_across_blocks_and_background_leases(make_app, instance_path):
    # Blocks of 50 with a lease in the background from the 5th number of a block on: the single-number
    # path serves most numbers, the general one finishes blocks and collects leases. Neither may skip,
    # repeat or reorder a counter.
    client = make_app(INT_MIN=1, INT_MAX=1000, V5_BLOCK_SIZE=50).test_client()

    numbers = [client.get("/v5/random").json["number"] for _ in range(1000)]

    permutation = AesRadixPermutation((instance_path / "v5" / "key").read_bytes(), 1000, b"int:1:1000:0")
    assert numbers == [1 + permutation(counter) for counter in range(1000)]
    assert_json_error(client.get("/v5/random"), 503, "space_exhausted")


def test_v5_singles_and_batches_across_runs_follow_the_counter(make_app, instance_path):
    # Runs of 512 indexes are computed ahead for single numbers; batches take their counters in between
    # (skipping part of a run, or starting one), and a single number then goes on from the counter after them.
    client = make_app(INT_MIN=1, INT_MAX=5000, V5_BLOCK_SIZE=2000).test_client()

    numbers = take(client, "/v5/random", 10)
    numbers += client.get("/v5/random?count=600").json["numbers"]
    numbers += take(client, "/v5/random", 700)
    numbers += client.get("/v5/random?count=3").json["numbers"]
    numbers += take(client, "/v5/random", 5)

    permutation = AesRadixPermutation((instance_path / "v5" / "key").read_bytes(), 5000, b"int:1:5000:0")
    assert numbers == [1 + permutation(counter) for counter in range(1318)]


@pytest.mark.parametrize(("int_max", "largest"), [(10**9, 400), (10**5, 100)], ids=["large-space", "small-space"])
def test_v5_leases_grow_for_a_fast_worker_and_shrink_when_it_slows(make_app, int_max, largest):
    # Blocks of 100 that may grow 4 times: in a space of over 1000 leases of 400, a worker that asks for a
    # lease within a second of the last doubles it up to 400, then halves it after 10 s per lease. A small
    # space keeps blocks. The clock is the test's: one request every 10 ms, then one every 20 s.
    app = make_app(INT_MIN=1, INT_MAX=int_max, V5_BLOCK_SIZE=100, V5_LEASE_GROWTH=4, MAX_COUNT=100)
    store = app.extensions["uniquerand"]["stores"]["v5"]
    now = [1000.0]
    store.clock = lambda: now[0]
    numbers: list[int] = []

    def serve(requests: int, step: float) -> list[int]:
        sizes = []
        for _ in range(requests):
            numbers.extend(store.issue("int", 50).codes)
            now[0] += step
            sizes.append(store._process.get().leases["int"].lease_size)
        return sizes

    fast = serve(60, 0.01)
    assert max(fast) == largest and fast[-1] == largest
    assert sorted(set(fast)) == [size for size in (100, 200, 400) if size <= largest]
    slow = serve(30, 20.0)
    assert slow[-1] == 100
    assert len(numbers) == len(set(numbers)) == 90 * 50
    # What this worker holds unserved: at most the lease it serves from and the one taken ahead.
    stats = store.stats()["int"]
    assert stats["held_by_this_process"] <= 2 * largest


def test_leases_take_one_leaves_every_boundary_to_the_general_path():
    permutation = AesRadixPermutation(bytes(32), 40)
    leases = Leases(permutation=permutation)
    leases.add(Block(0, 20))  # the next lease is due once 10% of the block, 2 counters, are served

    assert leases.take_one() == permutation(0)
    assert leases.take_one() is None  # this counter reaches the mark: the general path starts the lease
    assert leases.take(1) == [(1, 2)] and leases.wants_prefetch()
    leases.prefetch = Future()
    assert leases.take_one() is None  # a lease in flight: the general path collects it when it is done
    leases.prefetch = None
    leases.add(Block(20, 40))
    assert [leases.take_one() for _ in range(17)] == permutation.many(2, 17)  # two blocks: nothing to lease
    assert leases.take_one() is None  # the block's last counter: the general path finishes the block
    assert leases.take(1) == [(19, 20)] and len(leases.blocks) == 1
    leases.counter_exhausted = True  # nothing left to lease: the last block is served to its end
    assert [leases.take_one() for _ in range(19)] == permutation.many(20, 19)
    assert leases.take_one() is None
    assert (leases.available, leases.served) == (1, 39)


@pytest.mark.parametrize("tables", [True, False], ids=["tables", "aes"])
def test_leases_take_one_serves_a_long_block_run_by_run(tables):
    # Over two runs and a part: the indexes computed ahead are those of the counters served, in order.
    size = 3 * 512
    permutation = AesRadixPermutation(bytes(32), size, tables=tables)
    assert permutation.run_length == 512
    leases = Leases(permutation=permutation, counter_exhausted=True)
    leases.add(Block(7, size))

    served = [leases.take_one() for _ in range(size - 8)]

    assert served == [permutation(counter) for counter in range(7, size - 1)]
    assert leases.take_one() is None


def test_v5_key_file_is_private(app, client, instance_path):
    client.get("/v5/random")

    key = instance_path / "v5" / "key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_bytes()) == 32


def test_v5_same_key_and_counter_same_numbers_other_key_other_numbers(tmp_path):
    def batch(instance) -> list[int]:
        # 100 numbers are 2% of a block of 5000, below the 10% mark: no background lease races the copy.
        app = create_app({"INSTANCE_PATH": str(instance), "TESTING": True, "V5_BLOCK_SIZE": 5000})
        return app.test_client().get("/v5/random?count=100").json["numbers"]

    first = batch(tmp_path / "a")
    # A copy of the folder is a backup: restoring it is the one way to re-issue numbers (see docs/operations.md).
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    from_original, from_copy = batch(tmp_path / "a"), batch(tmp_path / "copy")
    other_key = batch(tmp_path / "b")

    assert from_copy == from_original
    assert not set(first) & set(from_original)
    assert not set(other_key) & set(first)


@pytest.mark.parametrize(
    "damage",
    [
        lambda key: key.unlink(),
        lambda key: key.write_bytes(os.urandom(32)),
        lambda key: key.write_bytes(b"short"),
    ],
    ids=["missing", "replaced", "truncated"],
)
def test_v5_refuses_to_serve_without_its_key(make_app, instance_path, damage):
    make_app().test_client().get("/v5/random")
    key = instance_path / "v5" / "key"
    damage(key)
    after_damage = sorted(p.name for p in key.parent.iterdir())
    client = make_app().test_client()

    for path in ("/v5/random", "/v5/random?type=float", "/v5/random?count=5"):
        body = assert_json_error(client.get(path), 500, "store_key_invalid")
        assert "key" in body["error"]
    assert sorted(p.name for p in key.parent.iterdir()) == after_damage
    assert client.get("/v5/stats").json["types"]["int"]["counter"] == 1000


def test_v5_refuses_to_serve_when_its_counters_are_gone(make_app, instance_path):
    make_app().test_client().get("/v5/random")
    for name in ("counters.db", "counters.db-wal", "counters.db-shm"):
        (instance_path / "v5" / name).unlink(missing_ok=True)
    client = make_app().test_client()

    assert client.get("/v5/stats").json["types"]["int"]["counter"] == 0
    assert_json_error(client.get("/v5/random"), 500, "store_key_invalid")
    assert not (instance_path / "v5" / "counters.db").exists()


def test_v5_refuses_a_counter_of_another_space(make_app):
    make_app(INT_MIN=1, INT_MAX=100).test_client().get("/v5/random")
    # Before anything of a type was leased its space may still change.
    assert make_app(INT_MIN=1, INT_MAX=100, FLOAT_MAX=50).test_client().get("/v5/random?type=float").status_code == 200

    response = make_app(INT_MIN=1, INT_MAX=101, FLOAT_MAX=50).test_client().get("/v5/random")

    assert "INT_MIN/INT_MAX" in assert_json_error(response, 500, "store_corrupt")["error"]


def test_v5_prefill_advances_the_counter_in_one_step(make_app):
    app = make_app(**SMALL)
    store = app.extensions["uniquerand"]["stores"]["v5"]

    store.prefill("int", 45)
    numbers = take(app.test_client(), "/v5/random", 5)

    assert len(set(numbers)) == 5
    assert_json_error(app.test_client().get("/v5/random"), 503, "space_exhausted")
    stats = app.test_client().get("/v5/stats").json["types"]["int"]
    assert stats["counter"] == 50
    assert stats["remaining"] == 0


def test_v5_stats_report_counter_served_and_remaining(make_app):
    client = make_app(INT_MIN=1, INT_MAX=10_000, V5_BLOCK_SIZE=100).test_client()
    take(client, "/v5/random", 3)

    body = client.get("/v5/stats").json

    assert body["stage"] == "v5"
    ints = body["types"]["int"]
    assert ints["counter"] == 100
    assert ints["served_by_this_process"] == 3
    assert ints["held_by_this_process"] == 97
    assert ints["space_size"] == 10_000
    assert ints["remaining"] == 10_000 - 3
    assert ints["unaccounted"] == 100


def test_v5_a_new_database_serves_and_records_the_aes_permutation(make_app, instance_path):
    numbers = take(make_app(**SMALL).test_client(), "/v5/random", 10)

    aes = AesRadixPermutation((instance_path / "v5" / "key").read_bytes(), 50, SMALL_TWEAK)
    assert numbers == [1 + aes(i) for i in range(10)]
    # Not a row an earlier release knows ('key_fingerprint', 'key_fingerprint:radix-feistel-10'): it refuses.
    assert fingerprint_rows(instance_path) == ["key_fingerprint:aes-radix-feistel-10"]


# The rows earlier releases wrote, and the permutation each served.
EARLIER_RELEASES = pytest.mark.parametrize(
    ("row", "permutation_type"),
    [("key_fingerprint", BinaryFeistelPermutation), ("key_fingerprint:radix-feistel-10", RadixFeistelPermutation)],
    ids=["binary", "radix"],
)


@EARLIER_RELEASES
@pytest.mark.parametrize("use", ["served", "prefilled", "unused"])
def test_v5_a_database_of_an_earlier_release_keeps_its_permutation(make_app, instance_path, use, row, permutation_type):
    # The key is made here by a batch the space refuses before any lease, then its row is given the name an
    # earlier release wrote.
    assert_json_error(make_app(**SMALL).test_client().get("/v5/random?count=51"), 503, "insufficient_remaining")
    rename_fingerprint_row(instance_path, row)
    earlier = make_app(**SMALL)
    used, served = [], []
    earlier_permutation = permutation_type((instance_path / "v5" / "key").read_bytes(), 50, SMALL_TWEAK)
    if use == "served":
        served = take(earlier.test_client(), "/v5/random", 20)
        used = [1 + earlier_permutation(i) for i in range(20)]
    elif use == "prefilled":
        earlier.extensions["uniquerand"]["stores"]["v5"].prefill("int", 20)
        used = [1 + earlier_permutation(i) for i in range(20)]  # a prefill counts as served

    later = take_until_exhausted(make_app(**SMALL).test_client())
    # The earlier server still holds the unserved rest of its leases; they are served once too.
    rest = later + take_until_exhausted(earlier.test_client())

    assert served == used[: len(served)]
    assert sorted(used + rest) == list(range(1, 51))
    if use == "unused":
        # Nothing leased yet, still the earlier network: the earlier release may serve beside this one.
        assert later == [1 + earlier_permutation(i) for i in range(50)]
    assert fingerprint_rows(instance_path) == [row]


@pytest.mark.parametrize("name", ["key_fingerprint:radix-feistel-12", "key_fingerprint_v9"])
def test_v5_refuses_a_database_recording_an_unknown_permutation(make_app, instance_path, name):
    take(make_app(**SMALL).test_client(), "/v5/random", 5)
    rename_fingerprint_row(instance_path, name)
    client = make_app(**SMALL).test_client()
    counter = client.get("/v5/stats").json["types"]["int"]["counter"]

    for path in ("/v5/random", "/v5/random?type=float", "/v5/random?count=5"):
        body = assert_json_error(client.get(path), 500, "store_corrupt")
        assert "written by a newer release" in body["error"]
        assert name in body["error"]
    assert client.get("/v5/stats").json["types"]["int"]["counter"] == counter
    assert fingerprint_rows(instance_path) == [name]


@pytest.mark.parametrize("value", ["0", "-5", "lots", "1000001"])
def test_v5_block_size_is_validated(make_app, value):
    with pytest.raises(ConfigError, match="V5_BLOCK_SIZE"):
        make_app(V5_BLOCK_SIZE=value)


# Real processes: the key race, a clean exit's accounting, and a fork after leasing.


def _spaces():
    from uniquerand.numbers import NumberSpace

    return {"int": NumberSpace("int", 1, 100_000), "float": NumberSpace("float", 0, 999, 3)}


def start_and_report_key(folder: str, barrier, queue) -> None:
    store = v5_store(Path(folder), _spaces(), block_size=10)
    # Open the database first, so that the processes meet where the key is created.
    store.counters.remaining("int")
    barrier.wait(timeout=20)
    try:
        numbers = store.issue("int", 5).codes
    except Exception as err:
        queue.put((repr(err), []))
        raise
    queue.put((hashlib.sha256(store._process.get().key).hexdigest(), numbers))


def test_v5_processes_racing_at_first_start_share_one_key(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(4), context.Queue()
    folder = tmp_path / "v5"
    processes = [context.Process(target=start_and_report_key, args=(str(folder), barrier, queue)) for _ in range(4)]
    for process in processes:
        process.start()
    results = [queue.get(timeout=30) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0

    keys = {key for key, _ in results}
    assert keys == {hashlib.sha256((folder / "key").read_bytes()).hexdigest()}
    numbers = [n for _, batch in results for n in batch]
    assert len(set(numbers)) == 20
    assert sorted(p.name for p in folder.iterdir() if "key" in p.name) == ["key"]


SERVE_AND_EXIT = """
import sys
from pathlib import Path
from tests.support import v5_store
from uniquerand.numbers import NumberSpace
spaces = {"int": NumberSpace("int", 1, 100_000), "float": NumberSpace("float", 0, 999, 3)}
v5_store(Path(sys.argv[1]), spaces, block_size=100).issue("int", 3)
"""


def test_v5_clean_exit_records_the_unserved_rest_as_skipped(tmp_path):
    # A plain interpreter exit, as a gunicorn worker's: multiprocessing children skip atexit.
    subprocess.run([sys.executable, "-c", SERVE_AND_EXIT, str(tmp_path / "v5")], cwd=REPO, check=True, timeout=30)

    stats = v5_store(tmp_path / "v5", _spaces(), block_size=100).stats()

    assert stats["int"]["counter"] == 100
    assert stats["int"]["skipped"] == 97
    assert stats["int"]["unaccounted"] == 0


def issue_into(store, queue) -> None:
    # One at a time: the child's first number takes the general path (it has no lease), the rest the
    # single-number one.
    queue.put([store.issue("int", 1).codes[0] for _ in range(5)])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_v5_forked_child_never_serves_its_parents_lease(tmp_path):
    store = v5_store(tmp_path / "v5", _spaces(), block_size=100)
    store.issue("int", 1)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=issue_into, args=(store, queue))
    child.start()
    from_child = queue.get(timeout=30)
    child.join(timeout=30)
    assert child.exitcode == 0

    from_parent = store.issue("int", 99).codes

    assert not set(from_child) & set(from_parent)


def serve_a_batch(instance: str, out: str) -> None:
    """Module-level target: one /v5 batch from a process of its own, which then exits (as a server would)."""
    app = create_app({"INSTANCE_PATH": instance, "TESTING": True})
    Path(out).write_text(json.dumps(app.test_client().get("/v5/random?count=20").json["numbers"]))


def test_v5_an_emptied_counter_database_is_refused_not_replayed(make_app, instance_path, tmp_path):
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=serve_a_batch, args=(str(instance_path), str(tmp_path / "first.json")))
    process.start()
    process.join(60)
    assert process.exitcode == 0
    assert len(json.loads((tmp_path / "first.json").read_text())) == 20
    (instance_path / "v5" / "counters.db").write_bytes(b"")
    response = make_app().test_client().get("/v5/random?count=20")
    assert response.status_code == 500, response.json
    assert response.json["code"] == "store_key_invalid"
    assert "no record of its key" in response.json["error"]


def test_v5_processes_with_other_spaces_never_lease_the_same_counter(make_app):
    # Two servers on one folder with different settings: the second must not permute the first's counter.
    narrow, wide = make_app(INT_MAX=1000).test_client(), make_app(INT_MAX=1001).test_client()
    assert narrow.get("/v5/random?count=100").status_code == 200
    response = wide.get("/v5/random?count=100")
    assert response.status_code == 500
    assert response.json["code"] == "store_corrupt"


def hold_a_lease(folder: str, ready, release) -> None:
    """Spawned process: takes one number from a space of 1000 in blocks of 10, so that it holds the other 9 of
    its block (and the block it leases ahead), and waits."""
    from uniquerand.numbers import NumberSpace

    spaces = {"int": NumberSpace("int", 1, 1000), "float": NumberSpace("float", 0, 999, 3)}
    store = v5_store(Path(folder), spaces, block_size=10)
    store.issue("int")
    store.stats()  # waits for the lease taken ahead
    ready.set()
    release.wait(60)


def test_v5_numbers_held_by_a_live_process_are_waited_for_and_lost_with_it(tmp_path):
    from uniquerand.numbers import NumberSpace
    from uniquerand.storage.contract import HeldElsewhereError, InsufficientRemainingError, SpaceExhaustedError

    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=hold_a_lease, args=(str(tmp_path / "v5"), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        spaces = {"int": NumberSpace("int", 1, 1000), "float": NumberSpace("float", 0, 999, 3)}
        store = v5_store(tmp_path / "v5", spaces, block_size=10)
        served = []
        with pytest.raises(HeldElsewhereError):
            for _ in range(1000):
                served += store.issue("int").codes
        held = 1000 - 1 - len(served)
        assert held == 19  # the rest of its block and the block it leased ahead
        with pytest.raises(HeldElsewhereError):
            store.issue("int", 19)  # fits in what the holder still may serve: a retry elsewhere may succeed
        with pytest.raises(InsufficientRemainingError) as caught:
            store.issue("int", 21)
        assert caught.value.remaining == 20  # an upper bound: the holder's open leases, whole
        os.kill(holder.pid, 9)
        holder.join(30)
        with pytest.raises(SpaceExhaustedError):
            store.issue("int")
        with pytest.raises(InsufficientRemainingError) as caught:
            store.issue("int", 2)
        assert caught.value.remaining == 0
        assert len(set(served)) == len(served)
    finally:
        # Not after the kill: a process killed inside `release.wait` leaves the event's condition waiting on it.
        if holder.is_alive():
            release.set()
            holder.join(30)
        if holder.is_alive():
            holder.kill()
