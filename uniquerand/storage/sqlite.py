"""SqliteStore: every issued code as a row of one SQLite database, as the design's third stage keeps them.

Concurrency: the PRIMARY KEY is the uniqueness check (INSERT OR IGNORE, never check-then-insert),
inside a `BEGIN IMMEDIATE` transaction that holds SQLite's write lock across every process; threads of
one process queue on a thread lock first, so they do not sleep in SQLite's busy handler.
Durability: WAL with `synchronous=FULL`, so a code is on disk when COMMIT returns, before it is served.
A file that is not a database is never touched: the store fails closed.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from uniquerand.numbers import KINDS, NumberKind, NumberSpace
from uniquerand.storage.base import (
    StoreBusyError,
    StoreCorruptError,
    StoreError,
    StoreUnavailableError,
)
from uniquerand.storage.picking import pick_unused

FILE_NAME = "numbers.db"
# Rows per transaction when prefilling: large enough to amortise the fsync, small enough to keep
# other writers' waits short.
PREFILL_CHUNK = 50_000
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS issued_int (code INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS issued_float (code INTEGER PRIMARY KEY);
"""


def store_error(err: sqlite3.Error, label: str) -> StoreError:
    """The typed store error for an sqlite3 exception (shared by every SQLite-backed store)."""
    name = getattr(err, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StoreBusyError(f"The {label} store is busy; retry shortly.")
    if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
        return StoreCorruptError(
            f"The {label} store is not a readable SQLite database ({err}); it was left untouched for an operator."
        )
    return StoreUnavailableError(f"The {label} store cannot be used: {err}.")


def connect(path: Path, timeout: float) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, fully synchronous."""
    connection = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        connection.execute("PRAGMA journal_mode=WAL").fetchall()
        connection.execute("PRAGMA synchronous=FULL")
    except sqlite3.Error:
        connection.close()
        raise
    return connection


class SqliteStore:
    def __init__(
        self,
        folder: str | os.PathLike[str],
        spaces: dict[NumberKind, NumberSpace],
        *,
        label: str,
        max_attempts: int,
        lock_timeout: float,
    ) -> None:
        self.folder = Path(folder)
        self.path = self.folder / FILE_NAME
        self.spaces = spaces
        self.label = label
        self.max_attempts = max_attempts
        self.lock_timeout = lock_timeout
        self._pid: int | None = None
        self._local = threading.local()
        self._write_lock = threading.Lock()

    def issue(self, kind: NumberKind, count: int = 1) -> list[int]:
        space = self.spaces[kind]
        table = f"issued_{kind}"
        with self._write_transaction() as connection:

            def claim(code: int) -> bool:
                return connection.execute(f"INSERT OR IGNORE INTO {table} (code) VALUES (?)", (code,)).rowcount == 1

            def used_ascending() -> Iterator[int]:
                cursor = connection.execute(f"SELECT code FROM {table} WHERE code >= ? ORDER BY code", (space.low,))
                try:
                    for (code,) in cursor:
                        yield code
                finally:
                    cursor.close()

            return pick_unused(
                space,
                count,
                self.max_attempts,
                claim,
                lambda: self._count(connection, kind),
                used_ascending,
            )

    def prefill(self, kind: NumberKind, count: int) -> None:
        for start in range(0, count, PREFILL_CHUNK):
            self.issue(kind, min(PREFILL_CHUNK, count - start))

    def stats(self) -> dict[str, dict[str, int]]:
        with self._translated_errors():
            connection = self._connection()
            result = {}
            for kind in KINDS:
                space = self.spaces[kind]
                issued = self._count(connection, kind)
                result[kind] = {"issued": issued, "space_size": space.size, "remaining": space.size - issued}
            return result

    def _count(self, connection: sqlite3.Connection, kind: NumberKind) -> int:
        space = self.spaces[kind]
        query = f"SELECT COUNT(*) FROM issued_{kind} WHERE code BETWEEN ? AND ?"
        return connection.execute(query, (space.low, space.high)).fetchone()[0]

    @contextmanager
    def _write_transaction(self) -> Iterator[sqlite3.Connection]:
        self._ensure_process_state()
        if not self._write_lock.acquire(timeout=self.lock_timeout):
            raise StoreBusyError(f"The {self.label} store is busy; retry shortly.")
        try:
            with self._translated_errors():
                connection = self._connection()
                connection.execute("BEGIN IMMEDIATE")
                try:
                    yield connection
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
        finally:
            self._write_lock.release()

    @contextmanager
    def _translated_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as err:
            raise store_error(err, self.label) from err
        except OSError as err:
            raise StoreUnavailableError(f"The {self.label} store cannot be used: {err.strerror}.") from err

    def _ensure_process_state(self) -> None:
        if self._pid != os.getpid():
            self._local = threading.local()
            self._write_lock = threading.Lock()
            self._pid = os.getpid()

    def _connection(self) -> sqlite3.Connection:
        self._ensure_process_state()
        connection = getattr(self._local, "connection", None)
        if connection is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            connection = connect(self.path, self.lock_timeout)
            try:
                self._prepare(connection)
            except BaseException:
                connection.close()
                raise
            self._local.connection = connection
        return connection

    def _prepare(self, connection: sqlite3.Connection) -> None:
        connection.executescript(SCHEMA)
        decimals = self.spaces["float"].decimals
        connection.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('float_decimals', ?)", (decimals,))
        stored = connection.execute("SELECT value FROM meta WHERE key = 'float_decimals'").fetchone()[0]
        if stored != decimals:
            raise StoreCorruptError(
                f"The {self.label} store was written with FLOAT_DECIMALS={stored} but the server runs with "
                f"{decimals}; its floats cannot be reinterpreted safely."
            )
