"""The files of a /v4 stage's folder: shard and ledger names and schemas, opening one with its meta checks
(float decimals, the ledger a shard was filled from, a changed range), transactions and the flocks."""

from __future__ import annotations

import fcntl
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from uniquerand.numbers import NumberKind
from uniquerand.storage.contract import StoreBusyError, StoreCorruptError, StoreSettings
from uniquerand.storage.sqlite.database import open_published, transaction, translated_errors

SHARDS_PER_KIND = 2


# `id` is the insertion order, i.e. the order of the random draws: claims take the oldest unused row, never
# the smallest code (that would serve small numbers first). The partial index holds only unused rows, so a
# claim's cost does not grow with the rows already used. used: 0 unused, 1 claimed, 2 retired (out of range).
# No UNIQUE on `code`: the ledger's PRIMARY KEY already keeps a code out of every other row of every shard,
# and a second random-key index would double the cost of a refill.
SHARD_SCHEMA = """
CREATE TABLE IF NOT EXISTS pool (id INTEGER PRIMARY KEY, code INTEGER NOT NULL, used INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS pool_unused ON pool (id) WHERE used = 0;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
"""
LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (code INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
"""


def shard_names(kind: NumberKind) -> list[str]:
    return [f"{kind}_shard_{index}.db" for index in range(SHARDS_PER_KIND)]


def ledger_name(kind: NumberKind) -> str:
    return f"used_numbers_{kind}.db"


def _new_id() -> int:
    return secrets.randbits(62)


def kind_of(name: str) -> NumberKind:
    """The kind of a shard or ledger file name."""
    return "int" if name.startswith(("int_", ledger_name("int"))) else "float"


def flock_by(descriptor: int, deadline: float, longest_pause: float) -> bool:
    """Takes an exclusive flock on `descriptor` before `deadline` (monotonic); False if it could not.

    Polls with a growing pause, for the caller that must give up in time if the holder were stopped (refill
    and open locks). The shard writers block in flock instead: they wait on their own thread (a real one
    under gevent, see `runtime`), and the requests waiting for them give up after LOCK_TIMEOUT (see
    `group_commit`). Under gevent, `time.sleep` here is gevent's: cooperative on the event loop's thread, and
    on one of `runtime`'s OS threads it runs a small event loop of that thread's own.
    """
    pause = min(0.0001, longest_pause)
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, longest_pause)


def count_available(connection: sqlite3.Connection) -> int:
    return connection.execute("SELECT COUNT(*) FROM pool WHERE used = 0").fetchone()[0]


def ledger_count(connection: sqlite3.Connection) -> int:
    """Ledger codes inside the space, kept in `meta` by every reservation (a COUNT would scan the ledger)."""
    return connection.execute("SELECT value FROM meta WHERE key = 'count'").fetchone()[0]


class ShardFiles:
    """Opens the shards and ledgers of `folder` and takes its flocks. Keeps no open file or lock itself:
    connections and lock descriptors belong to the process state of the store that uses them."""

    def __init__(self, settings: StoreSettings) -> None:
        self.folder = settings.folder
        self.spaces = settings.spaces
        self.label = settings.label
        self.lock_timeout = settings.lock_timeout

    def open(self, name: str) -> sqlite3.Connection:
        # Two processes switching a new file to WAL at once get "database is locked" without waiting.
        with self.flocks([".open.lock"], self.lock_timeout) as held:
            if not held:
                raise StoreBusyError.of(self.label)
            return self._open_unlocked(name)

    def _open_unlocked(self, name: str) -> sqlite3.Connection:
        # Published whole (see `open_published`): an emptied shard or ledger is refused, not started anew.
        return open_published(self.folder / name, self.lock_timeout, partial(self._prepare, name), self.label)

    def _prepare(self, name: str, connection: sqlite3.Connection) -> None:
        if name == ledger_name(kind_of(name)):
            # Refills insert random keys all over the ledger's B-tree: keep more of it in memory.
            connection.execute("PRAGMA cache_size = -65536")
            connection.executescript(LEDGER_SCHEMA)
            self._check_meta(connection, name, "float_decimals", self.spaces["float"].decimals)
            connection.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('ledger_id', ?)", (_new_id(),))
            self._count_ledger_in_range(connection, kind_of(name))
        else:
            connection.executescript(SHARD_SCHEMA)
            self._check_meta(connection, name, "float_decimals", self.spaces["float"].decimals)
            self._check_ledger_id(connection, name)
            self._retire_out_of_range(connection, kind_of(name))

    def _check_ledger_id(self, connection: sqlite3.Connection, name: str) -> None:
        """A shard belongs to the ledger it was filled from. A ledger that was deleted or emptied comes back
        as a new one, with a new id, that no longer knows what the shards served: it would pool those
        numbers again, so the shard refuses to serve."""
        ledger = self._open_unlocked(ledger_name(kind_of(name)))
        try:
            ledger_id = ledger.execute("SELECT value FROM meta WHERE key = 'ledger_id'").fetchone()[0]
        finally:
            ledger.close()
        connection.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('ledger_id', ?)", (ledger_id,))
        if connection.execute("SELECT value FROM meta WHERE key = 'ledger_id'").fetchone()[0] != ledger_id:
            raise StoreCorruptError(
                f"The {self.label} shard {name} was filled from another ledger than {ledger_name(kind_of(name))}: "
                "the ledger was replaced or emptied and would pool served numbers again. Restore it, or delete "
                "the stage's folder to reset the stage."
            )

    def _check_meta(self, connection: sqlite3.Connection, name: str, key: str, value: int) -> None:
        connection.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
        stored = connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]
        if stored != value:
            raise StoreCorruptError(
                f"The {self.label} file {name} was written with FLOAT_DECIMALS={stored} but the server runs "
                f"with {value}; its floats cannot be reinterpreted safely."
            )

    def _count_ledger_in_range(self, connection: sqlite3.Connection, kind: NumberKind) -> None:
        """(Re)counts the ledger's codes inside the space: once, and again only after the range changed."""
        space = self.spaces[kind]
        if self._bounds(connection) == {"low": space.low, "high": space.high}:
            return
        with transaction(connection):
            query = "SELECT COUNT(*) FROM ledger WHERE code BETWEEN ? AND ?"
            count = connection.execute(query, (space.low, space.high)).fetchone()[0]
            connection.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [("count", count), ("low", space.low), ("high", space.high)],
            )

    @staticmethod
    def _bounds(connection: sqlite3.Connection) -> dict[str, int]:
        return dict(connection.execute("SELECT key, value FROM meta WHERE key IN ('low', 'high')"))

    def _retire_out_of_range(self, connection: sqlite3.Connection, kind: NumberKind) -> None:
        """After INT_*/FLOAT_* changed, unused rows outside the new space must never be served."""
        space = self.spaces[kind]
        if self._bounds(connection) == {"low": space.low, "high": space.high}:
            return
        with transaction(connection):
            retired = connection.execute(
                "UPDATE pool SET used = 2 WHERE used = 0 AND code NOT BETWEEN ? AND ?", (space.low, space.high)
            ).rowcount
            connection.execute(
                "INSERT INTO meta (key, value) VALUES ('retired', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                (retired,),
            )
            connection.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [("low", space.low), ("high", space.high)]
            )

    def translated_errors(self, name: str):
        return translated_errors(f"{self.label} {name}")

    def refill_locks(self, names: list[str], wait: float):
        """flock on `<shard>.refill.lock` for every name (True) or none of them (False) within `wait`.
        The kernel drops an flock when its process dies, so a killed refill never blocks the shard."""
        return self.flocks([f"{name}.refill.lock" for name in names], wait)

    @contextmanager
    def flocks(self, lock_files: list[str], wait: float) -> Iterator[bool]:
        self.folder.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait
        descriptors: list[int] = []
        try:
            for lock_file in lock_files:
                descriptor = os.open(self.folder / lock_file, os.O_RDWR | os.O_CREAT, 0o644)
                descriptors.append(descriptor)
                if not flock_by(descriptor, deadline, longest_pause=0.05):
                    yield False
                    return
            yield True
        finally:
            for descriptor in descriptors:
                os.close(descriptor)
