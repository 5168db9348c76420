"""The store contract (`uniquerand.storage.contract.Store`), written once and run against every store on real
files: each stage's store as `build_stages` makes it. A new backend joins by adding one `Backend` entry.

Small spaces throughout, so that a store that loses an update repeats a number at once."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import filelock
import pytest

from tests.postgres import database_for
from tests.support import finish_process
from uniquerand import config as settings
from uniquerand.numbers import spaces_from_config
from uniquerand.stages import build_stages
from uniquerand.storage.contract import (
    InsufficientRemainingError,
    Issued,
    Prefilling,
    ShardsEmptyError,
    SpaceExhaustedError,
    Store,
    StoreBusyError,
    StoreCorruptError,
    StoreUnavailableError,
    os_failure,
)

SPAWN = multiprocessing.get_context("spawn")
# Every stage's store in small pools and leases: refills, leases and /v3's settling run all through a test.
SMALL = {"MAX_COUNT": 50, "V3_SETTLE_AT": 40, "V4_SHARD_SIZE": 100, "V4_REFILL_AT": 50, "V5_BLOCK_SIZE": 20}


@contextmanager
def _file_lock(folder: Path, name: str):
    lock = filelock.FileLock(str(folder / name), thread_local=False)
    with lock:
        yield


@contextmanager
def _sqlite_write_lock(folder: Path, name: str):
    connection = sqlite3.connect(folder / name, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        yield
    finally:
        connection.close()


@contextmanager
def _flocks(folder: Path, *names: str):
    descriptors = [os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o644) for name in names]
    try:
        for descriptor in descriptors:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        for descriptor in descriptors:
            os.close(descriptor)


@contextmanager
def _table_lock(folder: Path, *tables: str):
    """Every table named, locked against all other access by a transaction of another connection."""
    import psycopg

    with psycopg.connect(database_for(folder.parent)) as connection:
        connection.execute(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE")
        yield


@dataclass(frozen=True)
class Backend:
    """A store in the contract suite: the stage that builds it, the settings that select its backend, what
    another process holds to keep its writers waiting, and the files that make up its int records (none for a
    database: its refusals of foreign tables are tests/test_postgres_store.py's)."""

    stage: str
    hold_write_lock: Callable[[Path], object]
    int_files: tuple[str, ...]
    settings: tuple[tuple[str, object], ...] = ()
    # On a PostgreSQL database of its own per instance folder (the test server's, see tests/postgres.py).
    postgres: bool = False


BACKENDS = {
    "v1-json": Backend("v1", lambda folder: _file_lock(folder, "used_numbers.json.lock"), ("used_numbers.json",)),
    "v2-json": Backend("v2", lambda folder: _file_lock(folder, "used_numbers.json.lock"), ("used_numbers.json",)),
    "v3-sqlite": Backend("v3", lambda folder: _sqlite_write_lock(folder, "numbers.db"), ("numbers.db",)),
    "v4-sqlite": Backend(
        "v4",
        lambda folder: _flocks(folder, "int_shard_0.db.claim.lock", "int_shard_1.db.claim.lock"),
        ("int_shard_0.db", "int_shard_1.db", "used_numbers_int.db"),
    ),
    "v5-sqlite": Backend("v5", lambda folder: _sqlite_write_lock(folder, "counters.db"), ("counters.db",)),
    "v3-postgres": Backend("v3", lambda folder: _table_lock(folder, "uniquerand_v3_int"), (), postgres=True),
    "v4-postgres": Backend("v4", lambda folder: _table_lock(folder, "uniquerand_v4_pool_int"), (), postgres=True),
    "v5-postgres": Backend("v5", lambda folder: _table_lock(folder, "uniquerand_v5_counters"), (), postgres=True),
}


def make_store(backend: str, instance: Path, **overrides) -> Store:
    """The backend's store in `instance`, built as the app builds it, with SMALL and `overrides` settings."""
    entry = BACKENDS[backend]
    database = {"DATABASE_URL": database_for(instance)} if entry.postgres else {}
    config = {**settings.DEFAULTS, **SMALL, **dict(entry.settings), **database, **overrides}
    config["INSTANCE_PATH"] = str(instance)
    settings.validate(config)
    [stage] = [
        stage for stage in build_stages(instance, spaces_from_config(config), config) if stage.name == entry.stage
    ]
    return stage.store


def folder_of(backend: str, instance: Path) -> Path:
    return instance / BACKENDS[backend].stage


def issue(store: Store, kind: str, count: int = 1, deadline: float = 20.0) -> list[int]:
    """`store.issue`, waiting out /v4's documented transient "pools being refilled"."""
    end = time.monotonic() + deadline
    while True:
        try:
            issued = store.issue(kind, count)
            break
        except ShardsEmptyError:
            if time.monotonic() > end:
                raise
            time.sleep(0.02)
    assert isinstance(issued, Issued) and len(issued.codes) == count
    return issued.codes


@pytest.fixture(
    params=[
        pytest.param(name, marks=[pytest.mark.postgres] if BACKENDS[name].postgres else []) for name in sorted(BACKENDS)
    ]
)
def backend(request) -> str:
    if BACKENDS[request.param].postgres:
        request.getfixturevalue("postgres")
    return request.param


@pytest.fixture(params=sorted(name for name, entry in BACKENDS.items() if not entry.postgres))
def file_backend(request) -> str:
    """The stores kept in files (a database's foreign tables are refused in tests/test_postgres_store.py)."""
    return request.param


def test_every_store_keeps_the_contract(backend, tmp_path):
    store = make_store(backend, tmp_path)
    assert isinstance(store, Store) and isinstance(store, Prefilling)
    store.prepare()  # optional for a store; never required to serve
    store.check_ready()


def test_issues_distinct_codes_inside_the_space(backend, tmp_path):
    store = make_store(backend, tmp_path, INT_MIN=1, INT_MAX=1000)
    codes = issue(store, "int", 50) + [issue(store, "int")[0] for _ in range(300)]
    assert len(set(codes)) == 350
    assert all(1 <= code <= 1000 for code in codes)


def test_ints_and_floats_are_separate_namespaces(backend, tmp_path):
    store = make_store(backend, tmp_path, INT_MIN=1, INT_MAX=5, FLOAT_MIN=1, FLOAT_MAX=6, FLOAT_DECIMALS=0)
    assert sorted(issue(store, "int", 5)) == [1, 2, 3, 4, 5]
    assert sorted(issue(store, "float", 5)) == [1, 2, 3, 4, 5]


def test_small_space_is_served_to_the_last_number_then_exhausted(backend, tmp_path):
    store = make_store(backend, tmp_path, INT_MIN=1, INT_MAX=50)
    codes = [issue(store, "int")[0] for _ in range(50)]
    assert sorted(codes) == list(range(1, 51))
    with pytest.raises(SpaceExhaustedError, match="All possible numbers have been used"):
        issue(store, "int")
    stats = store.stats()["int"]
    assert (stats["issued"], stats["space_size"], stats["remaining"]) == (50, 50, 0)


def test_a_batch_larger_than_what_remains_issues_nothing(backend, tmp_path):
    store = make_store(backend, tmp_path, INT_MIN=1, INT_MAX=50)
    first = issue(store, "int", 45)
    with pytest.raises(InsufficientRemainingError) as caught:
        issue(store, "int", 6)
    assert (caught.value.requested, caught.value.remaining) == (6, 5)
    assert store.stats()["int"]["issued"] == 45
    rest = issue(store, "int", 5)
    assert sorted(first + rest) == list(range(1, 51))


def test_stats_count_what_was_issued(backend, tmp_path):
    store = make_store(backend, tmp_path, INT_MIN=1, INT_MAX=1000)
    issue(store, "int", 30)
    for _ in range(7):
        issue(store, "int")
    issue(store, "float", 3)
    stats = store.stats()
    assert (stats["int"]["issued"], stats["int"]["remaining"]) == (37, 1000 - 37)
    assert stats["float"]["issued"] == 3


def test_state_survives_a_new_store_object(backend, tmp_path):
    first = make_store(backend, tmp_path, INT_MIN=1, INT_MAX=30)
    issued = issue(first, "int", 20)
    second = make_store(backend, tmp_path, INT_MIN=1, INT_MAX=30)
    later = []
    with pytest.raises(SpaceExhaustedError):
        for _ in range(11):
            later += issue(second, "int")
    assert not set(issued) & set(later)
    # Near its end a space is leased a request at a time: the first object holds nothing back.
    assert sorted(issued + later) == list(range(1, 31))


def test_prefill_counts_as_issued(backend, tmp_path):
    store = make_store(backend, tmp_path)
    store.prefill("float", 2000)
    assert store.stats()["float"]["issued"] == 2000
    codes = issue(store, "float", 10)
    assert len(set(codes)) == 10


def test_threads_never_share_a_number(backend, tmp_path):
    store = make_store(backend, tmp_path, INT_MIN=1, INT_MAX=2000)
    with ThreadPoolExecutor(8) as pool:
        codes = [code for batch in pool.map(lambda _: issue(store, "int"), range(800)) for code in batch]
    assert len(codes) == len(set(codes)) == 800


def test_threads_racing_at_a_fresh_store_build_its_process_state_once(backend, tmp_path):
    # A worker's first requests arrive together: each must be served, and none twice.
    for attempt in range(5):
        store = make_store(backend, tmp_path / str(attempt), INT_MIN=1, INT_MAX=200)
        barrier = threading.Barrier(12)

        def first_request(_, store=store, barrier=barrier):
            barrier.wait(10)
            return issue(store, "int")

        with ThreadPoolExecutor(12) as pool:
            codes = [code for batch in pool.map(first_request, range(12)) for code in batch]
        assert len(set(codes)) == 12


def issue_in_process(backend: str, instance: str, rounds: int, out: str) -> None:
    """Spawned process: `rounds` single ints and a batch, written to `out`."""
    store = make_store(backend, Path(instance), INT_MIN=1, INT_MAX=1500)
    codes = [issue(store, "int")[0] for _ in range(rounds)] + issue(store, "int", 10)
    Path(out).write_text(json.dumps(codes))


def test_processes_never_share_a_number(backend, tmp_path):
    # 4 processes x 240 numbers in a space of 1500.
    outputs = [tmp_path / f"out{index}.json" for index in range(4)]
    processes = [
        SPAWN.Process(target=issue_in_process, args=(backend, str(tmp_path / "instance"), 230, str(out)))
        for out in outputs
    ]
    for process in processes:
        process.start()
    for process in processes:
        finish_process(process, 120)
        assert process.exitcode == 0
    codes = [code for out in outputs for code in json.loads(out.read_text())]
    assert len(codes) == len(set(codes)) == 960
    assert make_store(backend, tmp_path / "instance", INT_MIN=1, INT_MAX=1500).stats()["int"]["issued"] >= 960


def hold_write_lock(backend: str, folder: str, ready, release) -> None:
    """Spawned process: holds what the store's writers take turns on until told to let go."""
    with BACKENDS[backend].hold_write_lock(Path(folder)):
        ready.set()
        release.wait(60)


def test_a_held_write_lock_makes_the_store_busy_within_its_timeout(backend, tmp_path):
    issue(make_store(backend, tmp_path), "int")  # creates the files
    # A new object has no lease nor open connection: it must reach the files for its first number.
    store = make_store(backend, tmp_path, LOCK_TIMEOUT=0.5)
    ready, release = SPAWN.Event(), SPAWN.Event()
    holder = SPAWN.Process(target=hold_write_lock, args=(backend, str(folder_of(backend, tmp_path)), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        started = time.monotonic()
        with pytest.raises(StoreBusyError):
            store.issue("int")
        assert time.monotonic() - started < 5
    finally:
        release.set()
        finish_process(holder)
    assert holder.exitcode == 0
    assert len(issue(store, "int")) == 1


@pytest.mark.parametrize("content", [b"", b"{not json", b"not a store, but somebody's data\n" * 200, b"\xff\xfe"])
def test_unreadable_files_are_refused_and_left_untouched(file_backend, tmp_path, content):
    backend = file_backend
    # Written by another process that has exited: no connection of this one keeps the old files open.
    writer = SPAWN.Process(target=issue_in_process, args=(backend, str(tmp_path), 5, str(tmp_path / "out.json")))
    writer.start()
    finish_process(writer, 120)
    assert writer.exitcode == 0
    folder = folder_of(backend, tmp_path)
    names = BACKENDS[backend].int_files
    for name in names:
        for suffix in ("-wal", "-shm"):
            (folder / f"{name}{suffix}").unlink(missing_ok=True)
        (folder / name).write_bytes(content)
    store = make_store(backend, tmp_path)
    with pytest.raises((StoreCorruptError, *_refusals(backend, content))):
        store.issue("int")
    with pytest.raises((StoreCorruptError, *_refusals(backend, content))):
        store.stats()
    with pytest.raises((StoreCorruptError, *_refusals(backend, content))):
        store.check_ready()
    assert all((folder / name).read_bytes() == content for name in names)


def _refusals(backend: str, content: bytes) -> tuple[type[Exception], ...]:
    """An emptied /v5 database is refused as a key without its record (store_key_invalid), not as corrupt."""
    from uniquerand.storage.contract import StoreKeyError

    return (StoreKeyError,) if backend.startswith("v5") and not content else ()


def test_files_of_another_configuration_are_refused(backend, tmp_path):
    issue(make_store(backend, tmp_path, FLOAT_DECIMALS=6), "float", 3)
    with pytest.raises(StoreCorruptError):
        issue(make_store(backend, tmp_path, FLOAT_DECIMALS=4), "float")


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
