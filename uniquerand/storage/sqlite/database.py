"""What every SQLite store shares: a connection in WAL with `synchronous=FULL`, transactions, SQLite and OS
errors mapped to typed store errors, inserting the codes new to a table. A group committer's transactions are
in `target`."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from uniquerand.storage.contract import (
    StoreBusyError,
    StoreCorruptError,
    StoreError,
    StoreUnavailableError,
    os_failure,
)
from uniquerand.storage.durable import fsync_path

# What a client is told for SQLite's error classes; the error itself goes to the log only.
UNAVAILABLE_REASONS = {
    "SQLITE_FULL": "the disk is full",
    "SQLITE_READONLY": "its folder is read-only",
    "SQLITE_CANTOPEN": "its file cannot be opened",
    "SQLITE_IOERR": "an I/O error occurred",
    "SQLITE_PERM": "its file may not be written",
}


def store_error(err: BaseException, label: str) -> StoreError:
    """The typed store error for an sqlite3 or OS exception (shared by every SQLite-backed store).

    Its message is fixed per class of fault; the underlying error is kept in `detail` for the log."""
    if isinstance(err, StoreError):
        return err
    name = getattr(err, "sqlite_errorname", "") or ""
    if isinstance(err, OSError):
        error: StoreError = os_failure(StoreUnavailableError, f"The {label} store cannot be used", err)
    elif name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        error = StoreBusyError.of(label)
    elif name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
        error = StoreCorruptError(
            f"The {label} store is not a readable SQLite database; it was left untouched for an operator."
        )
    else:
        reason = next((text for prefix, text in UNAVAILABLE_REASONS.items() if name.startswith(prefix)), None)
        error = StoreUnavailableError(f"The {label} store cannot be used: {reason or 'a storage error occurred'}.")
    error.detail = f"{type(err).__name__}: {err}"
    return error


def insert_new_codes(
    connection: sqlite3.Connection, table: str, codes: list[int], unless_in: str | None = None
) -> list[int]:
    """Inserts distinct `codes` into `table` (column `code`, unique) in one statement, except those already
    in table `unless_in` if given; returns the codes inserted, in the order given (RETURNING promises no
    order, and the order is the draw order)."""
    unless = f" WHERE value NOT IN (SELECT code FROM {unless_in})" if unless_in else ""
    query = f"INSERT OR IGNORE INTO {table} (code) SELECT value FROM json_each(?){unless} RETURNING code"
    inserted = {code for (code,) in connection.execute(query, (json.dumps(codes),)).fetchall()}
    return [code for code in codes if code in inserted]


def connect(path: Path, timeout: float, create: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, fully synchronous.

    With `create=False` a missing file is an error (SQLITE_CANTOPEN), never a new empty database."""
    target = f"{Path(path).resolve().as_uri()}?mode={'rwc' if create else 'rw'}"
    connection = sqlite3.connect(target, timeout=timeout, isolation_level=None, check_same_thread=False, uri=True)
    try:
        connection.execute("PRAGMA journal_mode=WAL").fetchall()
        connection.execute("PRAGMA synchronous=FULL")
    except sqlite3.Error:
        connection.close()
        raise
    return connection


def open_published(
    path: Path, timeout: float, prepare: Callable[[sqlite3.Connection], None], label: str
) -> sqlite3.Connection:
    """A connection to the database at `path`, created if missing by `prepare`d and published whole: built
    under a private name and linked into place with `os.link`, which fails if another process published
    first. So a store's file is never seen half made, and an empty one can only mean damage: opening it
    would start an empty store and re-issue every number, so it is refused and left untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        _publish(path, timeout, prepare)
    if path.stat().st_size == 0:
        raise StoreCorruptError(
            f"The {label} store ({path.name}) is an empty file; it was left untouched for an operator."
        )
    # Never creates: a file deleted since the checks above must not come back as an empty store.
    connection = connect(path, timeout, create=False)
    try:
        prepare(connection)
    except BaseException:
        connection.close()
        raise
    return connection


def _publish(path: Path, timeout: float, prepare: Callable[[sqlite3.Connection], None]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    ends = ("", "-wal", "-shm")
    for end in ends:
        temporary.with_name(temporary.name + end).unlink(missing_ok=True)
    try:
        connection = connect(temporary, timeout)
        try:
            prepare(connection)
        finally:
            connection.close()  # checkpoints the WAL into the file and removes it
        fsync_path(temporary)
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
        fsync_path(path.parent)
    finally:
        for end in ends:
            temporary.with_name(temporary.name + end).unlink(missing_ok=True)


@contextmanager
def translated_errors(label: str) -> Iterator[None]:
    """sqlite3 and OS errors raised inside, as the store errors `store_error` makes of them."""
    try:
        yield
    except (sqlite3.Error, OSError) as err:
        raise store_error(err, label) from err


@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK. IMMEDIATE takes the write lock before reading: a deferred
    transaction that reads, then writes, fails at once with "database is locked" if another writer committed
    in between, whatever the busy timeout."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        # SQLite may have rolled back already (a full disk); a second ROLLBACK would hide the first error. A
        # COMMIT that failed leaves the transaction open: it must not hold the write lock for later ones.
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
