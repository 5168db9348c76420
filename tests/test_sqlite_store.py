"""SqliteStore (/v3) beyond the contract suite: WAL and synchronous=FULL, publishing the file whole, and
settling recent codes into the settled table."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.support import v3_codes
from tests.v4_support import rows
from uniquerand.numbers import NumberSpace
from uniquerand.storage.contract import SpaceExhaustedError, StoreSettings, StoreUnavailableError
from uniquerand.storage.sqlite.issued import SqliteStore
from uniquerand.storage.sqlite.settling import SLICES


def make_store(backend: str, folder: Path, int_max: int = 4294967295, lock_timeout: float = 5.0) -> SqliteStore:
    assert backend == "sqlite"
    spaces = {"int": NumberSpace("int", 1, int_max), "float": NumberSpace("float", 0, 10**14 - 1, 6)}
    return SqliteStore(StoreSettings(folder, spaces, "test", lock_timeout), settle_at=40)


def issued(store, kind: str, count: int = 1) -> list[int]:
    return store.issue(kind, count).codes


def test_sqlite_store_unopenable_path_is_unavailable(tmp_path):
    (tmp_path / "numbers.db").mkdir()
    with pytest.raises(StoreUnavailableError):
        make_store("sqlite", tmp_path).issue("int")


def test_sqlite_store_is_wal_and_fully_synchronous(tmp_path):
    store = make_store("sqlite", tmp_path)
    store.issue("int")
    # The setting belongs to each connection: ask the one that writes, inside a group commit.
    writer = store._committer.get().submit(
        lambda connection: connection.execute("PRAGMA synchronous").fetchone()[0], writes_once=True
    )
    assert writer == 2  # FULL
    assert store._reader().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_store_is_published_whole(tmp_path):
    make_store("sqlite", tmp_path).issue("int")
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.startswith("numbers.db")) == []
    connection = sqlite3.connect(tmp_path / "numbers.db")
    assert connection.execute("SELECT value FROM meta WHERE key = 'float_decimals'").fetchone() == (6,)


def test_sqlite_store_settles_recent_codes_into_the_settled_table(tmp_path):
    store = make_store("sqlite", tmp_path, int_max=5000)
    codes = [issued(store, "int")[0] for _ in range(300)]
    # Rounds run while codes are issued (settle_at=40): the recent table stays small.
    assert len(v3_codes_in(tmp_path, "recent_int")) < 100
    codes += issued(store, "int", 200)

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
    codes = issued(store, "int", 25) + [issued(store, "int")[0] for _ in range(35)]

    assert sorted(codes) == list(range(1, 61))
    assert v3_codes_in(tmp_path, "issued_int")
    with pytest.raises(SpaceExhaustedError):
        store.issue("int")


def test_sqlite_store_settles_codes_of_an_earlier_wider_space(tmp_path):
    # The first store settles nothing itself (settle_at far above what it issues).
    spaces = {"int": NumberSpace("int", 1, 10_000), "float": NumberSpace("float", 0, 10**14 - 1, 6)}
    wide = SqliteStore(StoreSettings(tmp_path, spaces, "test", 5.0), settle_at=10**6)
    wide.issue("int", 500)
    assert len(v3_codes_in(tmp_path, "recent_int")) == 500
    store = make_store("sqlite", tmp_path, int_max=100)
    store.prefill("int", 0)

    assert len(v3_codes_in(tmp_path, "issued_int")) == 500
    assert v3_codes_in(tmp_path, "recent_int") == set()


def test_sqlite_store_refuses_a_writer_that_ignores_the_recent_table(tmp_path):
    # An earlier release claimed a code by inserting into issued_int alone: it could take a recent code.
    store = make_store("sqlite", tmp_path, int_max=1000)
    code = issued(store, "int")[0]
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

    codes = [issued(store, "int")[0] for _ in range(80)]
    wait_for_posted_settling(store)

    assert 7 not in codes and len(set(codes)) == 80
    failures = [record for record in caplog.records if getattr(record, "event", None) == "posted_job_failed"]
    assert failures and "UNIQUE constraint failed: issued_int.code" in failures[0].fields["detail"]
    assert failures[0].fields["writer"] == "numbers.db"
    assert len(v3_codes_in(tmp_path, "issued_int")) >= 40
    assert 7 in v3_codes_in(tmp_path, "recent_int")


def wait_for_posted_settling(store: SqliteStore) -> None:
    """Returns once the settling steps the store's process posted have run: the last look may have posted one
    that the last request did not wait for. Each job runs after those queued before it, and a step posts
    at most one more, SLICES at most in a row."""
    for _ in range(SLICES + 1):
        store._committer.get().submit(lambda connection: None, writes_once=True)


def v3_codes_in(folder: Path, table: str) -> set[int]:
    return {code for (code,) in rows(folder / "numbers.db", f"SELECT code FROM {table}")}
