"""SqliteCounters: /v5's counters in SQLite (counters.db), the backend of `LeasedCounterStore`: the schema and
the LEASE statement, opening the database with the check that each counter belongs to the configured space,
the key check against the fingerprint the database keeps, and the permutation it records for its counters.

A lease is one transaction (`BEGIN IMMEDIATE`, an `UPDATE ... RETURNING` of the counter, the lease recorded with
its holder, `COMMIT`), with WAL and `synchronous=FULL`: it is on disk, and disjoint from every other process's,
before any of its counters is served. One connection per process, used by one thread at a time (`_Connection`
holds its lock).
"""

from __future__ import annotations

import copy
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from uniquerand.numbers import KINDS, NumberKind, NumberSpace
from uniquerand.storage import keyfile, runtime
from uniquerand.storage.contract import (
    InsufficientRemainingError,
    StoreBusyError,
    StoreCorruptError,
    StoreKeyError,
    StoreSettings,
)
from uniquerand.storage.holders import holder_alive, this_holder
from uniquerand.storage.leases import Lease
from uniquerand.storage.sqlite.counter_schema import LEASE, PREFILL, RECORD_LEASE, SCHEMA
from uniquerand.storage.sqlite.database import open_published, transaction, translated_errors

FILE_NAME = "counters.db"
KEY_NAME = "key"


def _remaining(connection: sqlite3.Connection, row: str) -> int:
    query = "SELECT high - low + 1 - next FROM counters WHERE kind = ?"
    return connection.execute(query, (row,)).fetchone()[0]


class SqliteCounters:
    """`folder`'s counter database and key, for one `LeasedCounterStore`: the stage's own int and float counters,
    or (`for_space`) the one counter of a named space, which shares the stage's connection and key."""

    def __init__(self, settings: StoreSettings, key_path: Path | None = None) -> None:
        self.folder = settings.folder
        self.path = settings.folder / FILE_NAME
        self.key_path = key_path or settings.folder / KEY_NAME
        self.spaces = settings.spaces
        self.label = settings.label
        self.lock_timeout = settings.lock_timeout
        # The counter row of each kind: the stage's own spaces are rows "int" and "float".
        self.rows: dict[NumberKind, str] = {kind: kind for kind in KINDS}
        self._process = runtime.PerProcess(_Connection)

    def for_space(self, row: str, space: NumberSpace) -> SqliteCounters:
        """The counter `row` of a named space (its row made with the space, see `space_catalog`), on this
        stage's connection and key."""
        counters = copy.copy(self)
        counters.spaces = {space.kind: space}
        counters.rows = {space.kind: row}
        return counters

    def load_key_and_permutation(self) -> tuple[bytes, keyfile.PermutationType]:
        """The key, checked against the one-way fingerprint the database keeps of it, and the permutation its
        counters are served with (named by the fingerprint's row, see `keyfile.PERMUTATIONS`).

        All of it runs under the database's write lock, so a key is published and fingerprinted before any
        other process looks. A key without a fingerprint means the database was replaced or emptied (a
        truncated counters.db opens as a new, empty one): counting from 0 again with that key would replay
        every number, so the stage refuses. A crash between publishing a new key and committing its
        fingerprint also leaves that state; it is refused too (fail closed: delete the folder to reset).
        Checked once per process: the stage's named spaces share the answer."""
        process = self._process.get()
        if process.key_record is None:
            process.key_record = self._load_key_and_permutation()
        return process.key_record

    def _load_key_and_permutation(self) -> tuple[bytes, keyfile.PermutationType]:
        with self.database() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                leased = connection.execute("SELECT max(next) FROM counters").fetchone()[0] > 0
                query = "SELECT name, value FROM meta WHERE substr(name, 1, ?) = ?"
                rows = dict(
                    connection.execute(query, (len(keyfile.FINGERPRINT_PREFIX), keyfile.FINGERPRINT_PREFIX)).fetchall()
                )
                key = keyfile.read_key(self.key_path, self.label)
                if key is None:
                    if leased or rows:
                        raise StoreKeyError(
                            f"The {self.label} store's key is missing but its counters have been used: a new key "
                            "would re-issue numbers. Restore the key file from where the counters came from."
                        )
                    key = keyfile.create_key(self.key_path, self.label)
                    query = "INSERT INTO meta (name, value) VALUES (?, ?)"
                    connection.execute(query, (keyfile.NEW_FINGERPRINT, keyfile.fingerprint(key)))
                    rows = {keyfile.NEW_FINGERPRINT: keyfile.fingerprint(key)}
                name = keyfile.permutation_row(rows, self.label, FILE_NAME)
                if rows[name] != keyfile.fingerprint(key):
                    raise StoreKeyError(
                        f"The {self.label} store's key is not the one its counters were used with; it was left as is."
                    )
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        return key, keyfile.PERMUTATIONS[name]

    def lease(self, kind: NumberKind, need: int, want: int, tail: int) -> Lease | None:
        """Counters [start, stop), at least `need` and at most `want` of them (exactly `need` once no more than
        `tail` are left), durably leased to this process and recorded with it as their holder; None if fewer
        than `need` are left."""
        with self.database() as connection:
            # A durable write, which may wait for another process's: off gevent's loop.
            return runtime.run_blocking(self._lease, connection, kind, need, want, tail)

    def close_leases(self, kind: NumberKind, starts: list[int]) -> None:
        """This process served every counter of its leases of `kind` that begin at `starts`."""
        with self.database() as connection:
            query = "UPDATE leases SET open = 0 WHERE kind = ? AND start = ? AND holder = ?"
            row = self.rows[kind]
            runtime.run_blocking(connection.executemany, query, [(row, start, this_holder()) for start in starts])

    def held_elsewhere(self, kind: NumberKind) -> list[int]:
        """Per other live process holding open leases of `kind`: at most how many counters it holds (its open
        leases, whole)."""
        with self.database() as connection:
            query = (
                "SELECT holder, sum(stop - start) FROM leases WHERE kind = ? AND open = 1 AND holder != ? "
                "GROUP BY holder"
            )
            rows = connection.execute(query, (self.rows[kind], this_holder())).fetchall()
            return [size for holder, size in rows if holder_alive(holder)]

    def remaining(self, kind: NumberKind) -> int:
        """Counter values not leased yet."""
        with self.database() as connection:
            return _remaining(connection, self.rows[kind])

    def prefill(self, kind: NumberKind, count: int) -> None:
        with self.database() as connection:
            if not connection.execute(PREFILL, {"n": count, **self._space_of(kind)}).fetchall():
                self._check_spaces(connection)
                raise InsufficientRemainingError(count, _remaining(connection, self.rows[kind]))

    def counters(self) -> dict[str, tuple[int, int, int]]:
        """Per kind: (next, accounted, skipped); nothing if the database does not exist (never creates it: a
        missing one must still be noticed by the next lease)."""
        if not self.path.exists():
            return {}
        kinds = {row: kind for kind, row in self.rows.items() if kind in self.spaces}
        with self.database() as connection:
            query = f"SELECT kind, next, accounted, skipped FROM counters WHERE kind IN ({', '.join('?' * len(kinds))})"
            rows = connection.execute(query, list(kinds)).fetchall()
            return {kinds[row]: tuple(values) for row, *values in rows}

    def account(self, unserved: dict[str, tuple[int, int]]) -> None:
        """At a clean exit: per kind, (leased, served) by this process; the difference is a known gap. Its
        leases of these counters close: nobody will serve what is left of them."""
        with self.database() as connection, transaction(connection):
            for kind, row in self.rows.items():
                if kind in unserved:
                    leased, served = unserved[kind]
                    connection.execute(
                        "UPDATE counters SET accounted = accounted + ?, skipped = skipped + ? WHERE kind = ?",
                        (leased, leased - served, row),
                    )
                # Another named space's, or the stage's own, leases are still served by this process.
                query = "UPDATE leases SET open = 0 WHERE holder = ? AND kind = ? AND open = 1"
                connection.execute(query, (this_holder(), row))

    def _lease(self, connection: sqlite3.Connection, kind: NumberKind, need: int, want: int, tail: int) -> Lease | None:
        parameters = {"need": need, "want": want, "tail": tail, **self._space_of(kind)}
        with transaction(connection):
            rows = connection.execute(LEASE, parameters).fetchall()
            if not rows:
                # Raises if the counter was leased in another space; takes back an unused one; then once more.
                self._check_spaces(connection)
                rows = connection.execute(LEASE, parameters).fetchall()
            if not rows:
                return None
            lease = Lease(*rows[0])
            connection.execute(RECORD_LEASE, (self.rows[kind], lease.start, lease.stop, this_holder()))
        return lease

    def _space_of(self, kind: NumberKind) -> dict[str, object]:
        """The statement parameters that tie a lease to this process's space: a counter of another space
        (another process, other settings) must never be leased under this one's permutation."""
        space = self.spaces[kind]
        return {"kind": self.rows[kind], "low": space.low, "high": space.high, "decimals": space.decimals}

    @contextmanager
    def database(self) -> Iterator[sqlite3.Connection]:
        """This process's connection, one user at a time; a wait past LOCK_TIMEOUT is a busy store."""
        process = self._process.get()
        if not process.lock.acquire(timeout=self.lock_timeout):
            raise StoreBusyError.of(self.label)
        try:
            with translated_errors(self.label):
                if process.connection is None:
                    process.connection = self._open()
                yield process.connection
        finally:
            process.lock.release()

    def _open(self) -> sqlite3.Connection:
        if self.key_path.exists() and not self.path.exists():
            raise StoreKeyError(
                f"The {self.label} store's counter database ({FILE_NAME}) is missing but its key exists: a new "
                "counter would re-issue numbers. Restore the database, or delete the key to reset the stage."
            )
        if self.key_path.exists() and self.path.stat().st_size == 0:
            raise StoreKeyError(
                f"The {self.label} store's counter database ({FILE_NAME}) is empty, so it has no record of its "
                "key: counting again would re-issue numbers. Restore it, or delete the stage's folder to reset "
                "the stage; it was left untouched."
            )
        return open_published(self.path, self.lock_timeout, self._prepare, self.label)

    def _prepare(self, connection: sqlite3.Connection) -> None:
        connection.executescript(SCHEMA)
        with transaction(connection):
            self._check_spaces(connection)

    def _check_spaces(self, connection: sqlite3.Connection) -> None:
        for kind, space in self.spaces.items():
            row = self.rows[kind]
            wanted = (space.low, space.high, space.decimals)
            if row == kind:
                # The stage's own counter: made on first use, and before anything is leased its space may
                # still change with the settings.
                query = "INSERT OR IGNORE INTO counters (kind, low, high, decimals) VALUES (?, ?, ?, ?)"
                connection.execute(query, (row, *wanted))
                query = "UPDATE counters SET low = ?, high = ?, decimals = ? WHERE kind = ? AND next = 0"
                connection.execute(query, (*wanted, row))
            stored = connection.execute("SELECT low, high, decimals FROM counters WHERE kind = ?", (row,)).fetchone()
            if stored is None:
                # A named space's counter is made in the transaction that creates the space.
                raise StoreCorruptError(f"The {self.label} store has no counter for its space {row!r}.")
            if tuple(stored) != wanted:
                settings = {"int": "INT_MIN/INT_MAX", "float": "FLOAT_MIN/FLOAT_MAX/FLOAT_DECIMALS"}.get(row)
                changed = f" ({settings} changed)" if settings else ""
                raise StoreCorruptError(
                    f"The {self.label} store's {row} counter was written for another space{changed}; "
                    "serving it in this one could re-issue numbers."
                )


class _Connection:
    """This process's connection to the counter database and the lock its users take turns on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connection: sqlite3.Connection | None = None
        self.key_record: tuple[bytes, keyfile.PermutationType] | None = None
