"""SqliteStore: every issued code as a row of one SQLite database, as the design's third stage keeps them.

Concurrency: the PRIMARY KEY is the uniqueness check (INSERT OR IGNORE, never check-then-insert),
inside a `BEGIN IMMEDIATE` transaction that holds SQLite's write lock across every process. Within a
process, requests are group-committed: the ones that arrive together share one transaction.
Layout: a code is in exactly one of two tables per type: `recent_<kind>`, small, where new codes go, and
`issued_<kind>`, large, which recent codes are moved into ("settled") a slice of the space per transaction
once there are `settle_at` of them (see `settling`). Random keys in a small table dirty few pages per commit; the large
one is only read on the request path, and written in slices that each touch a fraction of its pages.
Durability: WAL with `synchronous=FULL`; a request's codes are returned only after COMMIT returned.
A file that is not a database is never touched: the store fails closed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from uniquerand.numbers import KINDS, NumberKind
from uniquerand.storage import runtime
from uniquerand.storage.contract import Issued, Prefilling, Store, StoreBusyError, StoreCorruptError, StoreSettings
from uniquerand.storage.group_commit import GroupCommitter
from uniquerand.storage.picking import pick_unused
from uniquerand.storage.sqlite.database import insert_new_codes, open_published, translated_errors
from uniquerand.storage.sqlite.settling import SLICES, TRIGGERS, Settler
from uniquerand.storage.sqlite.target import SqliteTarget

FILE_NAME = "numbers.db"
# Rows per transaction when prefilling: large enough to amortise the fsync, small enough to keep
# other writers' waits short.
PREFILL_CHUNK = 50_000
# `issued_<kind>` holds the settled codes: the name earlier releases gave the only table of a type.
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS issued_int (code INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS issued_float (code INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS recent_int (code INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS recent_float (code INTEGER PRIMARY KEY);
"""

# A code is claimed only if it is in neither table: the check and the insert are one statement.
CLAIM = {
    kind: f"INSERT OR IGNORE INTO recent_{kind} (code) "
    f"SELECT ?1 WHERE NOT EXISTS (SELECT 1 FROM issued_{kind} WHERE code = ?1)"
    for kind in KINDS
}


class SqliteStore(Store, Prefilling):
    def __init__(self, settings: StoreSettings, *, settle_at: int) -> None:
        super().__init__(settings)
        self.path = self.folder / FILE_NAME
        self.settle_at = settle_at
        self._readers = runtime.PerProcess(runtime.os_thread_local)  # stats' connections, one per OS thread
        self._committer = runtime.PerProcess(self._new_committer)
        self._settler = runtime.PerProcess(lambda: Settler(self.spaces, self.settle_at, self._committer.get()))

    def issue(self, kind: NumberKind, count: int = 1) -> Issued:
        # A single number is claimed by its job's last statement (see pick_unused): no savepoint needed.
        if count == 1:
            codes = self._committer.get().submit(lambda connection: self._claim_one(connection, kind), writes_once=True)
        else:
            codes = self._committer.get().submit(lambda connection: self._claim(connection, kind, count))
        self._settler.get().issued(kind, len(codes))
        return Issued(codes)

    def prefill(self, kind: NumberKind, count: int) -> None:
        for start in range(0, count, PREFILL_CHUNK):
            self.issue(kind, min(PREFILL_CHUNK, count - start))
        # Then everything settles, a slice per transaction: the bench measures a store at rest.
        settler = self._settler.get()
        for index in range(SLICES):
            self._committer.get().submit(lambda connection, i=index: settler.move_slice(connection, kind, i))

    def check_ready(self) -> None:
        with translated_errors(self.label):
            self._reader().execute("SELECT count(*) FROM meta").fetchone()

    def stats(self) -> dict[str, dict[str, int]]:
        with translated_errors(self.label):
            connection = self._reader()
            result = {}
            for kind in KINDS:
                space = self.spaces[kind]
                issued = self._count(connection, kind)
                result[kind] = {"issued": issued, "space_size": space.size, "remaining": space.size - issued}
            return result

    def _claim_one(self, connection: sqlite3.Connection, kind: NumberKind) -> list[int]:
        """The common request: one draw, one statement. A used code takes the general path (its own
        MAX_ATTEMPTS draws, then the exact pick), which changes nothing but one draw more near the end."""
        code = self.spaces[kind].draw()
        if connection.execute(CLAIM[kind], (code,)).rowcount == 1:
            return [code]
        return self._claim(connection, kind, 1)

    def _claim(self, connection: sqlite3.Connection, kind: NumberKind, count: int) -> list[int]:
        space = self.spaces[kind]
        recent, settled = f"recent_{kind}", f"issued_{kind}"

        def claim(code: int) -> bool:
            return connection.execute(CLAIM[kind], (code,)).rowcount == 1

        def claim_many(codes: list[int]) -> list[int]:
            return insert_new_codes(connection, recent, codes, unless_in=settled)

        def used_ascending() -> Iterator[int]:
            query = (
                f"SELECT code FROM {settled} WHERE code >= ?1 UNION ALL "
                f"SELECT code FROM {recent} WHERE code >= ?1 ORDER BY code"
            )
            cursor = connection.execute(query, (space.low,))
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
            claim_many,
        )

    def _count(self, connection: sqlite3.Connection, kind: NumberKind) -> int:
        space = self.spaces[kind]
        query = (
            f"SELECT (SELECT COUNT(*) FROM issued_{kind} WHERE code BETWEEN ?1 AND ?2) "
            f"+ (SELECT COUNT(*) FROM recent_{kind} WHERE code BETWEEN ?1 AND ?2)"
        )
        return connection.execute(query, (space.low, space.high)).fetchone()[0]

    def _new_committer(self) -> GroupCommitter:
        target = SqliteTarget(FILE_NAME, self._open, self.path.with_name(FILE_NAME + ".lock"), self.label)
        return GroupCommitter([target], self.lock_timeout, lambda: StoreBusyError.of(self.label))

    def _reader(self) -> sqlite3.Connection:
        local = self._readers.get()
        connection = getattr(local, "connection", None)
        if connection is None:
            connection = local.connection = self._open()
        return connection

    def _open(self) -> sqlite3.Connection:
        return open_published(self.path, self.lock_timeout, self._prepare, self.label)

    def _prepare(self, connection: sqlite3.Connection) -> None:
        connection.executescript(SCHEMA + TRIGGERS)
        decimals = self.spaces["float"].decimals
        row = connection.execute("SELECT value FROM meta WHERE key = 'float_decimals'").fetchone()
        if row is None:
            connection.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('float_decimals', ?)", (decimals,))
            row = connection.execute("SELECT value FROM meta WHERE key = 'float_decimals'").fetchone()
        stored = row[0]
        if stored != decimals:
            raise StoreCorruptError(
                f"The {self.label} store was written with FLOAT_DECIMALS={stored} but the server runs with "
                f"{decimals}; its floats cannot be reinterpreted safely."
            )
