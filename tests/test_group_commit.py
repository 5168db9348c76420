"""The group committer's batched jobs on a real SQLite file: what lands in one group runs as one call, and a
batch that fails undoes its own writes only."""

from __future__ import annotations

import fcntl
import sqlite3
import threading
import time

import pytest

from uniquerand.storage.contract import StoreBusyError, StoreError
from uniquerand.storage.group_commit import GroupCommitter
from uniquerand.storage.sqlite.database import open_published
from uniquerand.storage.sqlite.target import SqliteTarget


def _committer(tmp_path):
    path = tmp_path / "t.db"

    def prepare(connection: sqlite3.Connection) -> None:
        connection.execute("CREATE TABLE IF NOT EXISTS t (v INTEGER PRIMARY KEY)")

    def opener() -> sqlite3.Connection:
        return open_published(path, 5.0, prepare, "t")

    target = SqliteTarget("t.db", opener, tmp_path / "t.db.lock", "t")
    # Waits long enough for a loaded machine: the test waits on conditions, never on this.
    return GroupCommitter([target], 60.0, lambda: StoreBusyError.of("t"), offload=False), opener


def test_items_of_one_group_run_as_one_call_and_each_gets_its_own_value(tmp_path):
    committer, opener = _committer(tmp_path)
    calls: list[list[int]] = []
    gate = threading.Event()

    def insert_all(connection, items):
        calls.append(list(items))
        connection.cursor().executemany("INSERT INTO t (v) VALUES (?)", [(item,) for item in items])
        return [item * 10 for item in items]

    # The first job holds the writer until every other item is queued, so they land in one group.
    running = threading.Event()

    def block(connection) -> None:
        running.set()
        gate.wait(60)

    blocker = threading.Thread(target=committer.submit, args=(block,))
    blocker.start()
    assert running.wait(60), "the first job never ran"
    values: dict[int, int] = {}
    threads = [
        threading.Thread(target=lambda i=i: values.__setitem__(i, committer.submit_batched(insert_all, i)))
        for i in range(20)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while committer._queue.qsize() < 20:
        assert time.monotonic() < deadline, "the items were never queued"
        time.sleep(0.01)
    gate.set()
    for thread in (blocker, *threads):
        thread.join(10)
    assert values == {i: i * 10 for i in range(20)}
    assert sorted(map(len, calls)) == [20]
    with opener() as connection:
        assert sorted(v for (v,) in connection.execute("SELECT v FROM t")) == list(range(20))


def test_a_failing_batch_fails_all_its_items_and_writes_nothing_while_other_jobs_commit(tmp_path):
    committer, opener = _committer(tmp_path)
    committer.submit(lambda c: c.execute("INSERT INTO t (v) VALUES (1)"))

    def insert_then_collide(connection, items):
        connection.execute("INSERT INTO t (v) VALUES (2)")
        connection.execute("INSERT INTO t (v) VALUES (1)")  # PRIMARY KEY: the batch fails after a write
        return items

    with pytest.raises(StoreError):
        committer.submit_batched(insert_then_collide, "x")
    committer.submit(lambda c: c.execute("INSERT INTO t (v) VALUES (3)"))
    with opener() as connection:
        assert sorted(v for (v,) in connection.execute("SELECT v FROM t")) == [1, 3]


def _target(tmp_path, busy_timeout: float = 60.0) -> SqliteTarget:
    path = tmp_path / "t.db"

    def prepare(connection: sqlite3.Connection) -> None:
        connection.execute("CREATE TABLE IF NOT EXISTS t (v INTEGER PRIMARY KEY)")

    return SqliteTarget("t.db", lambda: open_published(path, busy_timeout, prepare, "t"), tmp_path / "t.db.lock", "t")


def test_try_begin_never_waits_and_leaves_the_lock_free_when_it_cannot_begin(tmp_path):
    # SQLite's busy timeout is ten minutes: a try_begin that waited for its lock would still wait below.
    target = _target(tmp_path, busy_timeout=600.0)
    assert target.try_begin() is None  # no connection yet: the caller opens it in `begin`, off the loop
    target.commit(target.begin())
    # Another writer of the lock file (a second open file conflicts like another process).
    with open(tmp_path / "t.db.lock", "a+b") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert target.try_begin() is None
    # A writer that takes no lock file (an operator's shell) holding SQLite's write lock.
    shell = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    shell.execute("BEGIN IMMEDIATE")
    tried: list = []
    trying = threading.Thread(target=lambda: tried.append(target.try_begin()))
    trying.start()
    trying.join(60)
    assert not trying.is_alive(), "try_begin waited for SQLite's lock"
    assert tried == [None]
    with open(tmp_path / "t.db.lock", "a+b") as other:  # it let go of the lock file
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    shell.rollback()
    shell.close()
    connection = target.try_begin()
    assert connection is not None and connection.in_transaction
    assert connection.execute("PRAGMA busy_timeout").fetchone() == (600000,)  # restored after its BEGIN
    connection.execute("INSERT INTO t (v) VALUES (7)")
    target.commit(connection)
    with sqlite3.connect(tmp_path / "t.db") as reader:
        assert reader.execute("SELECT v FROM t").fetchall() == [(7,)]
