"""What every SQLite-backed store shares: a connection in WAL with `synchronous=FULL`, SQLite and OS errors
mapped to typed store errors, and inserting the codes that are new to a table."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from uniquerand.storage.base import (
    StoreBusyError,
    StoreCorruptError,
    StoreError,
    StoreUnavailableError,
    os_failure,
)

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
        error = StoreBusyError(f"The {label} store is busy; retry shortly.")
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
