"""/v5's recorded replies (`storage.replies`) on SQLite: replies.db beside counters.db, its own file so that
recording answers never waits for a lease's write lock."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from uniquerand.storage import runtime
from uniquerand.storage.replies import ReplyStore, new_committer
from uniquerand.storage.sqlite.database import open_published, translated_errors
from uniquerand.storage.sqlite.target import SqliteTarget

FILE_NAME = "replies.db"
SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    client TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, owner TEXT NOT NULL,
    claimed REAL NOT NULL, expires REAL NOT NULL, status INTEGER, body BLOB,
    PRIMARY KEY (client, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS replies_expires ON replies (expires);
"""


# A new row, or one that expired or whose claim went stale (same request, no answer, `stale` seconds old).
TAKE_OVER = (
    "ON CONFLICT (client, key) DO UPDATE SET fingerprint = excluded.fingerprint, owner = excluded.owner, "
    "claimed = excluded.claimed, expires = excluded.expires, status = excluded.status, body = excluded.body "
    "WHERE replies.expires <= excluded.claimed OR (replies.body IS NULL "
    "AND replies.fingerprint = excluded.fingerprint AND replies.claimed < excluded.claimed - ?) "
    "RETURNING client, key, owner"
)


class SqliteReplySql:
    claim = (
        f"INSERT INTO replies (client, key, fingerprint, owner, claimed, expires) VALUES (?, ?, ?, ?, ?, ?) {TAKE_OVER}"
    )
    select = "SELECT fingerprint, owner, claimed, status, body FROM replies WHERE client = ? AND key = ?"
    record = "UPDATE replies SET status = ?, body = ? WHERE client = ? AND key = ? AND owner = ? AND body IS NULL"
    release = "DELETE FROM replies WHERE client = ? AND key = ? AND owner = ? AND body IS NULL"
    purge = (
        "DELETE FROM replies WHERE (client, key) IN "
        "(SELECT client, key FROM replies WHERE expires <= ? ORDER BY expires LIMIT ?)"
    )

    def insert(self, rows: list[tuple], stale: float) -> tuple[str, tuple]:
        # A text per group size, kept in sqlite3's statement cache like any other.
        values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(rows))
        statement = (
            f"INSERT INTO replies (client, key, fingerprint, owner, claimed, expires, status, body) VALUES {values} "
            + TAKE_OVER
        )
        return statement, (*(value for row in rows for value in row), stale)


def sqlite_replies(folder: Path, label: str, lock_timeout: float, ttl: float, stale: float) -> ReplyStore:
    path = folder / FILE_NAME

    def prepare(connection: sqlite3.Connection) -> None:
        connection.executescript(SCHEMA)

    def committer(durable: bool):
        def opener() -> sqlite3.Connection:
            connection = open_published(path, lock_timeout, prepare, label)
            if not durable:
                # WAL's NORMAL: committed and visible at once, flushed with the next FULL commit (see replies.py).
                connection.execute("PRAGMA synchronous=NORMAL")
            return connection

        def build():
            # One lock file for both: their transactions take turns like any two writers of the file. The target
            # is built in the process that writes (it keeps a connection and the lock's descriptor).
            target = SqliteTarget(FILE_NAME, opener, path.with_name(FILE_NAME + ".lock"), label)
            # A keyed draw's write is one small row: its transaction runs on the worker's loop unless it must
            # wait for another writer (`group_commit`), which saves two hand-offs between threads per group.
            return new_committer(target, lock_timeout, label, offload=True, inline_when_free=True)

        return runtime.PerProcess(build)

    def read(statement: str, args: tuple):
        # Only when a key turned out to have a row already: a connection of its own, closed at once.
        with translated_errors(label):
            connection = open_published(path, lock_timeout, prepare, label)
            try:
                return connection.execute(statement, args).fetchone()
            finally:
                connection.close()

    return ReplyStore(SqliteReplySql(), committer(False), committer(True), read, label, ttl, stale)
