"""The store contract, written once and run against every remembering store, on real files."""

from __future__ import annotations

import functools
import json
import multiprocessing
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import filelock
import pytest

from tests.support import finish_process, v3_codes
from tests.v4_support import rows
from uniquerand.numbers import NumberSpace
from uniquerand.storage.base import (
    InsufficientRemainingError,
    SpaceExhaustedError,
    StoreBusyError,
    StoreCorruptError,
    StoreUnavailableError,
    os_failure,
)
from uniquerand.storage.json_file import JsonFileStore
from uniquerand.storage.settling import SLICES
from uniquerand.storage.sqlite import SqliteStore

# A tiny settle_at: the contract suite runs /v3's settling (recent codes moved into the settled table)
# all the time, under threads and processes.
BACKENDS = {"json": JsonFileStore, "sqlite": functools.partial(SqliteStore, settle_at=40)}


def make_store(backend: str, folder: Path, int_max: int = 4294967295, decimals: int = 6, lock_timeout: float = 5.0):
    spaces = {
        "int": NumberSpace("int", 1, int_max),
        "float": NumberSpace("float", 0, 10 ** (8 + decimals) - 1, decimals),
    }
    return BACKENDS[backend](folder, spaces, label="test", max_attempts=100, lock_timeout=lock_timeout)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    return request.param


def issue_in_process(backend: str, folder: str, int_max: int, rounds: int, out: str) -> None:
    """Module-level target for spawned processes: issues `rounds` ints and writes them to `out`."""
    store = make_store(backend, Path(folder), int_max)
    codes = [store.issue("int")[0] for _ in range(rounds)]
    Path(out).write_text(json.dumps(codes))


def hold_lock_in_process(backend: str, folder: str, ready, release) -> None:
    """Takes the store's cross-process write lock and holds it until told to let go."""
    if backend == "json":
        lock = filelock.FileLock(str(Path(folder) / "used_numbers.json.lock"))
        lock.acquire()
    else:
        connection = sqlite3.connect(Path(folder) / "numbers.db", isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
    ready.set()
    release.wait(30)


def test_issues_distinct_codes_inside_the_space(backend, tmp_path):
    store = make_store(backend, tmp_path, int_max=1000)
    codes = store.issue("int", 300) + [store.issue("int")[0] for _ in range(100)]
    assert len(set(codes)) == 400
    assert all(1 <= code <= 1000 for code in codes)


def test_ints_and_floats_are_separate_namespaces(backend, tmp_path):
    store = make_store(backend, tmp_path, int_max=5, decimals=0)
    store.spaces["float"] = NumberSpace("float", 1, 5, 0)
    assert sorted(store.issue("int", 5)) == [1, 2, 3, 4, 5]
    assert sorted(store.issue("float", 5)) == [1, 2, 3, 4, 5]


def test_small_space_is_served_to_the_last_number_then_exhausted(backend, tmp_path):
    store = make_store(backend, tmp_path, int_max=50)
    codes = [store.issue("int")[0] for _ in range(50)]
    assert sorted(codes) == list(range(1, 51))
    with pytest.raises(SpaceExhaustedError, match="All possible numbers have been used"):
        store.issue("int")
    assert store.stats()["int"] == {"issued": 50, "space_size": 50, "remaining": 0}


def test_batch_larger_than_what_remains_issues_nothing(backend, tmp_path):
    store = make_store(backend, tmp_path, int_max=50)
    store.issue("int", 45)
    with pytest.raises(InsufficientRemainingError) as caught:
        store.issue("int", 6)
    assert (caught.value.requested, caught.value.remaining) == (6, 5)
    assert store.stats()["int"]["issued"] == 45
    assert len(set(store.issue("int", 5))) == 5


def test_state_survives_a_new_store_object(backend, tmp_path):
    first = make_store(backend, tmp_path, int_max=30)
    issued = set(first.issue("int", 20))
    second = make_store(backend, tmp_path, int_max=30)
    assert issued.isdisjoint(second.issue("int", 10))
    assert second.stats()["int"]["remaining"] == 0


def test_prefill_counts_as_issued(backend, tmp_path):
    store = make_store(backend, tmp_path)
    store.prefill("float", 5000)
    assert store.stats()["float"]["issued"] == 5000


def test_threads_never_share_a_number(backend, tmp_path):
    store = make_store(backend, tmp_path, int_max=2000)
    with ThreadPoolExecutor(8) as pool:
        codes = [code for batch in pool.map(lambda _: store.issue("int"), range(800)) for code in batch]
    assert len(codes) == len(set(codes)) == 800


def test_processes_never_share_a_number(backend, tmp_path):
    # 4 processes x 250 draws in a space of 1500: a store that loses updates repeats a number at once.
    context = multiprocessing.get_context("spawn")
    outputs = [tmp_path / f"out{index}.json" for index in range(4)]
    processes = [
        context.Process(target=issue_in_process, args=(backend, str(tmp_path / "store"), 1500, 250, str(out)))
        for out in outputs
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    codes = [code for out in outputs for code in json.loads(out.read_text())]
    assert len(codes) == len(set(codes)) == 1000
    assert make_store(backend, tmp_path / "store", 1500).stats()["int"]["issued"] == 1000


def test_a_held_lock_makes_the_store_busy_not_hang(backend, tmp_path):
    store = make_store(backend, tmp_path, lock_timeout=0.5)
    store.issue("int")  # creates the files
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=hold_lock_in_process, args=(backend, str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(StoreBusyError):
            store.issue("int")
    finally:
        release.set()
        finish_process(holder)
    assert holder.exitcode == 0
    assert len(store.issue("int")) == 1


def test_json_file_store_fails_closed_on_unreadable_files(tmp_path):
    store = make_store("json", tmp_path)
    for content in [b"{not json", b"", b'{"format": "uniquerand-json-v1", "int": [1, 2', b'{"int": "x"}', b"\xff\xfe"]:
        (tmp_path / "used_numbers.json").write_bytes(content)
        with pytest.raises(StoreCorruptError, match="left untouched"):
            store.issue("int")
        with pytest.raises(StoreCorruptError):
            store.stats()
        assert (tmp_path / "used_numbers.json").read_bytes() == content


def test_sqlite_store_fails_closed_on_a_file_that_is_not_a_database(tmp_path):
    content = b"this is not a database, but it is somebody's data\n" * 200
    (tmp_path / "numbers.db").write_bytes(content)
    store = make_store("sqlite", tmp_path)
    with pytest.raises(StoreCorruptError, match="not a readable SQLite database"):
        store.issue("int")
    with pytest.raises(StoreCorruptError):
        store.stats()
    assert (tmp_path / "numbers.db").read_bytes() == content


@pytest.mark.parametrize("backend_name", ["json", "sqlite"])
def test_a_store_written_with_other_float_decimals_is_refused(tmp_path, backend_name):
    make_store(backend_name, tmp_path, decimals=6).issue("float", 3)
    with pytest.raises(StoreCorruptError, match="FLOAT_DECIMALS"):
        make_store(backend_name, tmp_path, decimals=4).issue("float")


def test_json_file_store_unreadable_path_is_unavailable(tmp_path):
    (tmp_path / "used_numbers.json").mkdir()
    with pytest.raises(StoreUnavailableError, match="Cannot read"):
        make_store("json", tmp_path).issue("int")


def test_sqlite_store_unopenable_path_is_unavailable(tmp_path):
    (tmp_path / "numbers.db").mkdir()
    with pytest.raises(StoreUnavailableError):
        make_store("sqlite", tmp_path).issue("int")


def test_json_file_store_sees_writes_of_another_store_object(tmp_path):
    first, second = make_store("json", tmp_path, int_max=20), make_store("json", tmp_path, int_max=20)
    first.issue("int", 10)
    second.issue("int", 10)
    with pytest.raises(SpaceExhaustedError):
        first.issue("int")


def test_sqlite_store_is_wal_and_fully_synchronous(tmp_path):
    store = make_store("sqlite", tmp_path)
    store.issue("int")
    # The setting belongs to each connection: ask the one that writes, inside a group commit.
    writer = store._committer.get().submit(
        lambda connection: connection.execute("PRAGMA synchronous").fetchone()[0], writes_once=True
    )
    assert writer == 2  # FULL
    assert store._reader().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_stores_keep_working_across_threads_started_later(backend, tmp_path):
    store = make_store(backend, tmp_path, int_max=100)
    store.issue("int", 10)
    results: list[int] = []
    thread = threading.Thread(target=lambda: results.extend(store.issue("int", 10)))
    thread.start()
    thread.join(30)
    assert len(results) == 10


def test_threads_racing_at_a_fresh_store_build_its_process_state_once(backend, tmp_path):
    # A worker's first requests arrive together: each must be served, and none twice.
    for attempt in range(10):
        store = make_store(backend, tmp_path / str(attempt), int_max=200)
        barrier = threading.Barrier(12)

        def first_request(_, store=store, barrier=barrier):
            barrier.wait(10)
            return store.issue("int")

        with ThreadPoolExecutor(12) as pool:
            codes = [code for batch in pool.map(first_request, range(12)) for code in batch]
        assert len(set(codes)) == 12


def test_sqlite_store_refuses_an_emptied_database(tmp_path):
    store = make_store("sqlite", tmp_path)
    store.issue("int", 5)
    del store
    (tmp_path / "numbers.db").write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"numbers.db{suffix}").unlink(missing_ok=True)
    with pytest.raises(StoreCorruptError, match="empty file"):
        make_store("sqlite", tmp_path).issue("int")
    assert (tmp_path / "numbers.db").read_bytes() == b""


def test_sqlite_store_is_published_whole(tmp_path):
    make_store("sqlite", tmp_path).issue("int")
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.startswith("numbers.db")) == []
    connection = sqlite3.connect(tmp_path / "numbers.db")
    assert connection.execute("SELECT value FROM meta WHERE key = 'float_decimals'").fetchone() == (6,)


def test_json_file_store_hands_out_nothing_when_serving_a_batch_fails_unexpectedly(tmp_path, monkeypatch):
    # A fault injected into the write (not a store error): every request of the batch must fail, none may
    # come back with codes that were never written.
    from uniquerand.storage.json_file import _Request

    store = make_store("json", tmp_path, int_max=100)
    state = store._process.get()
    batch = [_Request("int", 1), _Request("int", 1)]

    def failing_write(data):
        raise MemoryError("injected")

    monkeypatch.setattr(store, "_write", failing_write)
    with pytest.raises(MemoryError):
        store._serve(state.file_lock, batch)
    assert all(request.done and request.codes is None and request.error is not None for request in batch)
    assert not (tmp_path / "used_numbers.json").exists()


def test_sqlite_store_settles_recent_codes_into_the_settled_table(tmp_path):
    store = make_store("sqlite", tmp_path, int_max=5000)
    codes = [store.issue("int")[0] for _ in range(300)]
    # Rounds run while codes are issued (settle_at=40): the recent table stays small.
    assert len(v3_codes_in(tmp_path, "recent_int")) < 100
    codes += store.issue("int", 200)

    stored = v3_codes(tmp_path / "numbers.db", "int")  # also asserts that no code is in both tables
    assert stored == set(codes) and len(codes) == 500
    assert store.stats()["int"]["issued"] == 500


def test_sqlite_store_prefill_settles_everything(tmp_path):
    store = make_store("sqlite", tmp_path, int_max=100_000)
    store.issue("float", 10)
    store.prefill("float", 2000)

    assert len(v3_codes_in(tmp_path, "issued_float")) == 2010
    assert v3_codes_in(tmp_path, "recent_float") == set()


def test_sqlite_store_never_reissues_a_settled_code(tmp_path):
    # A space of 60 with settle_at=40: most codes are settled before the space runs out, so every claim
    # must look in both tables, for single draws, batches and the exact pick near the end.
    store = make_store("sqlite", tmp_path, int_max=60)
    codes = store.issue("int", 25) + [store.issue("int")[0] for _ in range(35)]

    assert sorted(codes) == list(range(1, 61))
    assert v3_codes_in(tmp_path, "issued_int")
    with pytest.raises(SpaceExhaustedError):
        store.issue("int")


def test_sqlite_store_settles_codes_of_an_earlier_wider_space(tmp_path):
    # The first store settles nothing itself (settle_at far above what it issues).
    spaces = {"int": NumberSpace("int", 1, 10_000), "float": NumberSpace("float", 0, 10**14 - 1, 6)}
    wide = SqliteStore(tmp_path, spaces, label="test", max_attempts=100, lock_timeout=5.0, settle_at=10**6)
    wide.issue("int", 500)
    assert len(v3_codes_in(tmp_path, "recent_int")) == 500
    store = make_store("sqlite", tmp_path, int_max=100)
    store.prefill("int", 0)

    assert len(v3_codes_in(tmp_path, "issued_int")) == 500
    assert v3_codes_in(tmp_path, "recent_int") == set()


def test_sqlite_store_refuses_a_writer_that_ignores_the_recent_table(tmp_path):
    # An earlier release claimed a code by inserting into issued_int alone: it could take a recent code.
    store = make_store("sqlite", tmp_path, int_max=1000)
    code = store.issue("int")[0]
    connection = sqlite3.connect(tmp_path / "numbers.db", isolation_level=None)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="written by settling only"):
            connection.execute("INSERT OR IGNORE INTO issued_int (code) VALUES (?)", (code,))
    finally:
        connection.close()
    assert v3_codes(tmp_path / "numbers.db", "int") == {code}


def test_sqlite_store_logs_a_failed_settling_move_and_keeps_serving(tmp_path, caplog):
    # A code planted in both tables breaks the invariant: its slice's move fails loudly, is undone, and the
    # other slices still settle.
    store = make_store("sqlite", tmp_path, int_max=100)
    store.issue("int")
    connection = sqlite3.connect(tmp_path / "numbers.db", isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT INTO meta (key, value) VALUES ('settling', 1)")
        connection.execute("INSERT OR IGNORE INTO issued_int (code) VALUES (7)")
        connection.execute("DELETE FROM meta WHERE key = 'settling'")
        connection.execute("INSERT OR IGNORE INTO recent_int (code) VALUES (7)")
        connection.execute("COMMIT")
    finally:
        connection.close()

    codes = [store.issue("int")[0] for _ in range(80)]
    wait_for_posted_settling(store)

    assert 7 not in codes and len(set(codes)) == 80
    failures = [record for record in caplog.records if getattr(record, "event", None) == "posted_job_failed"]
    assert failures and "UNIQUE constraint failed: issued_int.code" in failures[0].fields["detail"]
    assert failures[0].fields["writer"] == "numbers.db.lock"
    assert len(v3_codes_in(tmp_path, "issued_int")) >= 40
    assert 7 in v3_codes_in(tmp_path, "recent_int")


def test_an_os_error_is_told_by_its_reason_and_logged_whole():
    err = PermissionError(13, "Permission denied", "/x")
    error = os_failure(StoreUnavailableError, "Cannot write the v1 store", err)

    assert str(error) == "Cannot write the v1 store: Permission denied."
    assert error.detail == "PermissionError: [Errno 13] Permission denied: '/x'"


def test_an_os_error_without_an_errno_still_gets_a_reason():
    # Seen once: "Cannot write the v1 store: None."
    error = os_failure(StoreUnavailableError, "Cannot write the v1 store", OSError("raw write() returned 5"))

    assert str(error) == "Cannot write the v1 store: an unexpected I/O error."
    assert error.detail == "OSError: raw write() returned 5"


def wait_for_posted_settling(store: SqliteStore) -> None:
    """Returns once the settling steps the store's process posted have run: the last look may have posted one
    that the last request did not wait for. Each job runs after those queued before it, and a step posts
    at most one more, SLICES at most in a row."""
    for _ in range(SLICES + 1):
        store._committer.get().submit(lambda connection: None, writes_once=True)


def v3_codes_in(folder: Path, table: str) -> set[int]:
    return {code for (code,) in rows(folder / "numbers.db", f"SELECT code FROM {table}")}
