"""/v5's counter database (counters.db): its schema and LEASE statement, opening it with the check that each
counter belongs to the configured space, the key check against the fingerprint the database keeps, and the
permutation the database records for its counters."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from uniquerand.aes_permutation import AesRadixPermutation
from uniquerand.numbers import KINDS, NumberKind, NumberSpace
from uniquerand.permutation import BinaryFeistelPermutation, Permutation, RadixFeistelPermutation
from uniquerand.storage.base import StoreCorruptError, StoreKeyError, StoreUnavailableError, os_failure
from uniquerand.storage.keyfile import create_key, fingerprint, read_key
from uniquerand.storage.sqlite_common import connect, store_error

FILE_NAME = "counters.db"
KEY_NAME = "key"
# The permutation a database's counters are served with is named by the meta row that holds the key's
# fingerprint. Earlier releases wrote 'key_fingerprint' (the binary network) and then
# 'key_fingerprint:radix-feistel-10' (the radix network over BLAKE2b): such a database goes on with its own,
# whatever it leased, since another permutation of its next counters could give numbers it already served.
# A new database gets the AES network's row, which an earlier release does not know and refuses to serve:
# two releases never serve one database with two permutations.
PermutationType = Callable[[bytes, int, bytes], Permutation]
FINGERPRINT_PREFIX = "key_fingerprint"
NEW_FINGERPRINT = "key_fingerprint:aes-radix-feistel-10"
PERMUTATIONS: dict[str, PermutationType] = {
    "key_fingerprint": BinaryFeistelPermutation,
    "key_fingerprint:radix-feistel-10": RadixFeistelPermutation,
    NEW_FINGERPRINT: AesRadixPermutation,
}
# Near the end of the space a lease takes at most 1/TAIL_SHARE of what is left, so that the numbers
# held unserved by other workers when the counter runs out stay few (see README, /v5).
TAIL_SHARE = 16
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS counters (
    kind TEXT PRIMARY KEY,
    low INTEGER NOT NULL,
    high INTEGER NOT NULL,
    decimals INTEGER NOT NULL,
    next INTEGER NOT NULL DEFAULT 0,
    lease_start INTEGER NOT NULL DEFAULT 0,
    accounted INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0
);
"""
# `next` is the high-water mark: every counter below it belongs to a lease (or a prefill). SET reads
# the old row, so lease_start is where this lease begins. `accounted` counts leases closed cleanly
# (and prefills), `skipped` their counters never served.
LEASE = f"""
UPDATE counters
SET lease_start = next,
    next = next + max(:need, min(:want, (high - low + 1 - next + {TAIL_SHARE - 1}) / {TAIL_SHARE}))
WHERE kind = :kind AND high - low + 1 - next >= :need
  AND low = :low AND high = :high AND decimals = :decimals
RETURNING lease_start, next
"""


def remaining_in_counter(connection: sqlite3.Connection, kind: NumberKind) -> int:
    query = "SELECT high - low + 1 - next FROM counters WHERE kind = ?"
    return connection.execute(query, (kind,)).fetchone()[0]


class CounterDatabase:
    """Opens `folder`'s counter database and checks it and the key; keeps no connection itself (the store's
    process state does, so none crosses a fork)."""

    def __init__(self, folder: Path, spaces: dict[NumberKind, NumberSpace], *, label: str, lock_timeout: float) -> None:
        self.folder = folder
        self.path = folder / FILE_NAME
        self.key_path = folder / KEY_NAME
        self.spaces = spaces
        self.label = label
        self.lock_timeout = lock_timeout

    def space_of(self, kind: NumberKind) -> dict[str, object]:
        """The statement parameters that tie a lease to this process's space: a counter of another space
        (another process, other settings) must never be leased under this one's permutation."""
        space = self.spaces[kind]
        return {"kind": kind, "low": space.low, "high": space.high, "decimals": space.decimals}

    def open(self) -> sqlite3.Connection:
        if not self.path.exists() and self.key_path.exists():
            raise StoreKeyError(
                f"The {self.label} store's counter database ({FILE_NAME}) is missing but its key exists: a new "
                "counter would re-issue numbers. Restore the database, or delete the key to reset the stage."
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        connection = connect(self.path, self.lock_timeout)
        try:
            connection.executescript(SCHEMA)
            connection.execute("BEGIN IMMEDIATE")
            try:
                self.check_spaces(connection)
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        except BaseException:
            connection.close()
            raise
        return connection

    def check_spaces(self, connection: sqlite3.Connection) -> None:
        for kind in KINDS:
            space = self.spaces[kind]
            wanted = (space.low, space.high, space.decimals)
            connection.execute(
                "INSERT OR IGNORE INTO counters (kind, low, high, decimals) VALUES (?, ?, ?, ?)", (kind, *wanted)
            )
            # A counter indexes one space only; before anything is leased the space may still change.
            connection.execute(
                "UPDATE counters SET low = ?, high = ?, decimals = ? WHERE kind = ? AND next = 0", (*wanted, kind)
            )
            stored = connection.execute("SELECT low, high, decimals FROM counters WHERE kind = ?", (kind,)).fetchone()
            if tuple(stored) != wanted:
                settings = "INT_MIN/INT_MAX" if kind == "int" else "FLOAT_MIN/FLOAT_MAX/FLOAT_DECIMALS"
                raise StoreCorruptError(
                    f"The {self.label} store's {kind} counter was written for another space ({settings} changed); "
                    "serving it in this one could re-issue numbers."
                )

    def load_key_and_permutation(self, connection: sqlite3.Connection) -> tuple[bytes, PermutationType]:
        """The key, checked against the one-way fingerprint the database keeps of it, and the permutation its
        counters are served with (named by the fingerprint's row, see PERMUTATIONS).

        All of it runs under the database's write lock, so a key is published and fingerprinted before any
        other process looks. A key without a fingerprint means the database was replaced or emptied (a
        truncated counters.db opens as a new, empty one): counting from 0 again with that key would replay
        every number, so the stage refuses. A crash between publishing a new key and committing its
        fingerprint also leaves that state; it is refused too (fail closed: delete the folder to reset)."""
        connection.execute("BEGIN IMMEDIATE")
        try:
            leased = connection.execute("SELECT max(next) FROM counters").fetchone()[0] > 0
            query = "SELECT name, value FROM meta WHERE substr(name, 1, ?) = ?"
            rows = dict(connection.execute(query, (len(FINGERPRINT_PREFIX), FINGERPRINT_PREFIX)).fetchall())
            key = read_key(self.key_path, self.label)
            if key is None:
                if leased or rows:
                    raise StoreKeyError(
                        f"The {self.label} store's key is missing but its counters have been used: a new key "
                        "would re-issue numbers. Restore the key file from where the counters came from."
                    )
                key = create_key(self.key_path, self.label)
                connection.execute("INSERT INTO meta (name, value) VALUES (?, ?)", (NEW_FINGERPRINT, fingerprint(key)))
                rows = {NEW_FINGERPRINT: fingerprint(key)}
            name = self._permutation_row(rows)
            if rows[name] != fingerprint(key):
                raise StoreKeyError(
                    f"The {self.label} store's key is not the one its counters were used with; it was left as is."
                )
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        return key, PERMUTATIONS[name]

    def _permutation_row(self, rows: dict[str, bytes]) -> str:
        """The one fingerprint row this release knows, or why the database cannot be served."""
        if not rows:
            raise StoreKeyError(
                f"The {self.label} store's counter database ({FILE_NAME}) has no record of its key: it was "
                "replaced or emptied, and counting again would re-issue numbers. Restore it, or delete the "
                "stage's folder to reset the stage."
            )
        known = [name for name in rows if name in PERMUTATIONS]
        if len(known) != 1 or len(rows) != 1:
            raise StoreCorruptError(
                f"The {self.label} store's counter database ({FILE_NAME}) records its key as {sorted(rows)}: "
                "written by a newer release, or damaged. Serving its counters with a permutation other than "
                "theirs could re-issue numbers; run the release that wrote it."
            )
        return known[0]

    @contextmanager
    def translated_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as err:
            raise store_error(err, self.label) from err
        except OSError as err:
            raise os_failure(StoreUnavailableError, f"The {self.label} store cannot be used", err) from err
