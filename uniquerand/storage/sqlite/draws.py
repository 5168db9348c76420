"""/v5's signed draws (`storage.draws`) on SQLite: draws.db beside counters.db."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from uniquerand.storage import runtime
from uniquerand.storage.draws import SignedDraws
from uniquerand.storage.replies import new_committer
from uniquerand.storage.sqlite.database import open_published, translated_errors
from uniquerand.storage.sqlite.target import SqliteTarget

FILE_NAME = "draws.db"
SCHEMA = """
CREATE TABLE IF NOT EXISTS serials (space TEXT PRIMARY KEY, last INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS draws (
    space TEXT NOT NULL, serial INTEGER NOT NULL, body BLOB NOT NULL, PRIMARY KEY (space, serial)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS signing_keys (kid TEXT PRIMARY KEY, jwk TEXT NOT NULL, first_used INTEGER NOT NULL);
"""


class SqliteDrawSql:
    next_serials = (
        "INSERT INTO serials (space, last) VALUES (?, ?) ON CONFLICT (space) DO UPDATE SET last = last + excluded.last "
        "RETURNING last"
    )
    insert = "INSERT INTO draws (space, serial, body) VALUES (?, ?, ?)"
    select = "SELECT body FROM draws WHERE space = ? AND serial = ?"
    publish_key = "INSERT INTO signing_keys (kid, jwk, first_used) VALUES (?, ?, unixepoch()) ON CONFLICT DO NOTHING"
    keys = "SELECT jwk FROM signing_keys ORDER BY first_used, kid"


def sqlite_draws(folder: Path, label: str, lock_timeout: float) -> SignedDraws:
    path = folder / FILE_NAME

    def prepare(connection: sqlite3.Connection) -> None:
        connection.executescript(SCHEMA)

    def opener() -> sqlite3.Connection:
        return open_published(path, lock_timeout, prepare, label)

    def committer():
        target = SqliteTarget(FILE_NAME, opener, path.with_name(FILE_NAME + ".lock"), label)
        return new_committer(target, lock_timeout, label, offload=True)

    @contextlib.contextmanager
    def reader() -> Iterator[sqlite3.Connection]:
        with translated_errors(label):
            connection = opener()
            try:
                yield connection
            finally:
                connection.close()

    return SignedDraws(SqliteDrawSql(), runtime.PerProcess(committer), reader, label)
