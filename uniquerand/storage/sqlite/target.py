"""A database file as a `GroupCommitter` writes it (`storage.group_commit.Target`): each group's transaction on
the process's connection, under a lock file that every process's writers take turns on."""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from uniquerand.storage.contract import StoreError
from uniquerand.storage.sqlite.database import store_error


class SqliteTarget:
    """A database as a `GroupCommitter` writes it (see `group_commit.Target`). Writers of every process take
    turns on a blocking `flock` of a lock file beside it, held from BEGIN to COMMIT: the kernel wakes the next
    one the moment the lock is free, where SQLite's busy handler would sleep and poll. Made per process (it
    keeps the connection and the lock's descriptor)."""

    faults = (sqlite3.Error, OSError)

    def __init__(self, name: str, open_connection: Callable[[], sqlite3.Connection], lock_path: Path, label: str):
        self.name = name
        self.label = label
        self._open_connection = open_connection
        self._lock_path = lock_path
        self._connection: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._busy_timeout: int | None = None  # SQLite's, in ms: `try_begin` sets it to 0 for its BEGIN

    def begin(self) -> sqlite3.Connection:
        try:
            if self._lock_fd is None:
                self._lock_path.parent.mkdir(parents=True, exist_ok=True)
                self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        except OSError as err:
            raise self.translate(err) from err
        try:
            if self._connection is None:
                self._connection = self._open_connection()
            self._connection.execute("BEGIN IMMEDIATE")
        except BaseException as err:
            self._unlock()
            if isinstance(err, Exception):
                raise self.translate(err) from err
            raise
        return self._connection

    def try_begin(self) -> sqlite3.Connection | None:
        """`begin` without waiting, for a caller that must not block (the worker's event loop): None if another
        writer holds the lock file or SQLite's write lock (a process that takes no lock file, such as an
        operator's shell), or if the connection is not open yet; the caller then waits in `begin` elsewhere."""
        connection = self._connection
        if connection is None:
            return None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        except OSError as err:
            raise self.translate(err) from err
        try:
            if self._busy_timeout is None:
                self._busy_timeout = connection.execute("PRAGMA busy_timeout").fetchone()[0]
            connection.execute("PRAGMA busy_timeout = 0")
            try:
                connection.execute("BEGIN IMMEDIATE")
            finally:
                connection.execute(f"PRAGMA busy_timeout = {self._busy_timeout}")
        except BaseException as err:
            self._rollback(connection)
            self._unlock()
            if isinstance(err, sqlite3.OperationalError) and err.sqlite_errorcode == sqlite3.SQLITE_BUSY:
                return None
            if isinstance(err, Exception):
                raise self.translate(err) from err
            raise
        return connection

    def savepoint(self, connection: sqlite3.Connection) -> None:
        connection.execute("SAVEPOINT job")

    def rollback_to_savepoint(self, connection: sqlite3.Connection) -> None:
        connection.execute("ROLLBACK TO job")

    def release_savepoint(self, connection: sqlite3.Connection) -> None:
        connection.execute("RELEASE job")

    def commit(self, connection: sqlite3.Connection) -> None:
        try:
            connection.execute("COMMIT")
        except (sqlite3.Error, OSError) as err:
            self._rollback(connection)
            raise self.translate(err) from err
        finally:
            self._unlock()

    def abort(self, connection: sqlite3.Connection | None) -> None:
        try:
            self._rollback(connection)
        finally:
            self._unlock()

    def translate(self, err: BaseException) -> StoreError:
        return store_error(err, self.label)

    def _rollback(self, connection: sqlite3.Connection | None) -> None:
        try:
            if connection is not None and connection.in_transaction:
                connection.execute("ROLLBACK")
        except sqlite3.Error:
            # A connection that cannot roll back is not used again.
            connection.close()
            self._connection = None

    def _unlock(self) -> None:
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
