"""PostgresCounters: /v5's counters in PostgreSQL, the backend of `LeasedCounterStore` that several hosts share.

A lease is one transaction: an `UPDATE ... RETURNING` of the kind's counter row (the row lock orders the
leases of every host; never a sequence, whose `nextval` is not transactional and can repeat after a crash),
the lease recorded with its holder, COMMIT with `synchronous_commit=on`. Only a lease whose COMMIT returned
is served; one whose answer is lost is never served (a gap).
The key: every host serves with the same key, from its own key file (instance/v5/key, 0600). The first host
creates it with the database's first use and records its fingerprint; the others must be given a copy of
that file (see docs/deploying.md). A host without it, or with another key, refuses to serve. The database
holds only the fingerprint: whoever can read the database cannot compute the numbers.
Holders: a holder on this host is alive while its process lives (`holders`); one on another host while it
renews its heartbeat (every HEARTBEAT_EVERY seconds while it holds open leases).
"""

from __future__ import annotations

import copy
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from uniquerand.numbers import KINDS, NumberKind, NumberSpace
from uniquerand.storage import keyfile, runtime
from uniquerand.storage.contract import InsufficientRemainingError, StoreError, StoreKeyError, StoreSettings
from uniquerand.storage.holders import holder_alive, this_holder
from uniquerand.storage.leases import Lease
from uniquerand.storage.postgres.counter_schema import (
    HEARTBEAT,
    HELD,
    LEASE,
    OPEN_LEASES_INDEX,
    PREFILL,
    RECORD_LEASE,
    REMAINING,
    SCHEMA,
)
from uniquerand.storage.postgres.database import Database
from uniquerand.storage.postgres.schema import exists

KEY_NAME = "key"
HEARTBEAT_EVERY = 10.0
# A holder on another host whose heartbeat is older than this counts as gone.
HOLDER_TIMEOUT = 60.0


def _boot(holder: str) -> str:
    return holder.split(":", 1)[0]


class PostgresCounters:
    """The stage's counters in `database`, and its key in `folder`, for one `LeasedCounterStore`: the stage's own
    int and float counters, or (`for_space`) the one counter of a named space, on the same pool and key."""

    def __init__(self, settings: StoreSettings, database: Database, key_path: Path | None = None) -> None:
        self.key_path = key_path or settings.folder / KEY_NAME
        # The stage's own spaces, recorded and checked at set-up; `spaces` are those this object leases from.
        self.stage_spaces = self.spaces = settings.spaces
        self.label = settings.label
        self.database = database
        # The counter row of each kind: the stage's own spaces are rows "int" and "float".
        self.rows: dict[NumberKind, str] = {kind: kind for kind in KINDS}
        # Shared with the named spaces' copies: one heartbeat and one key check per process.
        self._heartbeat = runtime.PerProcess(lambda: _Heartbeat(self))
        self._key_record = runtime.PerProcess(list)

    def for_space(self, row: str, space: NumberSpace) -> PostgresCounters:
        """The counter `row` of a named space (made with the space, see `space_catalog`)."""
        counters = copy.copy(self)
        counters.spaces = {space.kind: space}
        counters.rows = {space.kind: row}
        return counters

    def load_key_and_permutation(self) -> tuple[bytes, keyfile.PermutationType]:
        """The key, checked against the fingerprint the database keeps; with a new database, a new key is made
        and its fingerprint recorded in the same transaction, which locks the counter rows: one host creates it.
        Checked once per process: the stage's named spaces share the answer."""
        record = self._key_record.get()
        if not record:
            record.append(self._load_key_and_permutation())
        return record[0]

    def _load_key_and_permutation(self) -> tuple[bytes, keyfile.PermutationType]:
        self.set_up()
        with self.database.transaction(self.label) as connection:
            # Hosts starting at once take turns here (the counter rows exist since the set-up): one creates the key.
            # Only the stage's own rows: a named space's are leased meanwhile, and need no lock.
            query = "SELECT kind FROM uniquerand_v5_counters WHERE kind = ANY(%s) ORDER BY kind FOR UPDATE"
            connection.execute(query, (list(KINDS),)).fetchall()
            query = "SELECT name, value FROM uniquerand_meta WHERE stage = %s AND starts_with(name, %s)"
            found = connection.execute(query, (self.label, keyfile.FINGERPRINT_PREFIX)).fetchall()
            rows = {name: bytes.fromhex(value) for name, value in found}
            leased = connection.execute("SELECT coalesce(max(next), 0) FROM uniquerand_v5_counters").fetchone()[0] > 0
            key = keyfile.read_key(self.key_path, self.label)
            if key is None:
                if rows or leased:
                    raise StoreKeyError(
                        f"The {self.label} store's database is served with a key this host does not have: copy the "
                        f"key file ({self.key_path}, set by UNIQUERAND_V5_KEY_FILE) from a host that serves it."
                    )
                self.key_path.parent.mkdir(parents=True, exist_ok=True)
                key = keyfile.create_key(self.key_path, self.label)
                connection.execute(
                    "INSERT INTO uniquerand_meta (stage, name, value) VALUES (%s, %s, %s)",
                    (self.label, keyfile.NEW_FINGERPRINT, keyfile.fingerprint(key).hex()),
                )
                rows = {keyfile.NEW_FINGERPRINT: keyfile.fingerprint(key)}
            if not rows:
                raise StoreKeyError(
                    f"This host's {self.label} key file ({self.key_path}, set by UNIQUERAND_V5_KEY_FILE) was not made "
                    "for this database (it served SQLite's counters.db, or another database): counting here with it "
                    "would repeat that one's numbers. Give this host the key of the hosts serving this database, or, "
                    "for a new deployment, move the key file away so that a new one is made. Nothing was changed."
                )
            name = keyfile.permutation_row(rows, self.label, "database")
            if rows[name] != keyfile.fingerprint(key):
                raise StoreKeyError(
                    f"The {self.label} store's key is not the one its database is served with; it was left as is. "
                    "Every host must have the same key file."
                )
        return key, keyfile.PERMUTATIONS[name]

    def lease(self, kind: NumberKind, need: int, want: int, tail: int) -> Lease | None:
        self.set_up()
        parameters = {"need": need, "want": want, "tail": tail, **self._space_of(kind)}
        unknown = self._heartbeat.get().unknown
        closing, lease, rows = list(unknown), None, []
        try:
            with self.database.transaction(self.label) as connection:
                self._close_unknown(connection, closing)
                rows = connection.execute(LEASE, parameters).fetchall()
                if rows:
                    lease = Lease(*rows[0])
                    connection.execute(RECORD_LEASE, (parameters["kind"], lease.start, lease.stop, this_holder()))
                    connection.execute(HEARTBEAT, (this_holder(),))
        except StoreError:
            if lease is not None:
                # Its COMMIT may have happened: then it is recorded open, held by this process, which will never
                # serve it. Closed by this process's next lease or heartbeat, so that the others stop waiting.
                unknown.append((parameters["kind"], lease.start))
                self._heartbeat.get().start()
            raise
        del unknown[: len(closing)]
        if lease is not None:
            self._heartbeat.get().start()
        return lease

    @staticmethod
    def _close_unknown(connection: Any, leases: list[tuple[str, int]]) -> None:
        for kind, start in leases:
            connection.execute(
                "UPDATE uniquerand_v5_leases SET open = false WHERE kind = %s AND start = %s AND holder = %s",
                (kind, start, this_holder()),
            )

    def close_leases(self, kind: NumberKind, starts: list[int]) -> None:
        with self.database.connection(self.label) as connection:
            connection.execute(
                "UPDATE uniquerand_v5_leases SET open = false WHERE kind = %s AND start = ANY(%s) AND holder = %s",
                (self.rows[kind], starts, this_holder()),
            )

    def held_elsewhere(self, kind: NumberKind) -> list[int]:
        """Per other live holder of open leases of `kind`: at most how many counters it holds. A holder of this
        host lives while its process does; one of another host while its heartbeat is fresh."""
        here = _boot(this_holder())
        with self.database.connection(self.label) as connection:
            rows = connection.execute(HELD, (self.rows[kind], this_holder())).fetchall()
        return [
            int(size)
            for holder, size, age in rows
            if (holder_alive(holder) if _boot(holder) == here else age is not None and age < HOLDER_TIMEOUT)
        ]

    def remaining(self, kind: NumberKind) -> int:
        self.set_up()
        with self.database.connection(self.label) as connection:
            return connection.execute(REMAINING, (self.rows[kind],)).fetchone()[0]

    def prefill(self, kind: NumberKind, count: int) -> None:
        self.set_up()
        with self.database.transaction(self.label) as connection:
            if not connection.execute(PREFILL, {"n": count, "kind": self.rows[kind]}).fetchall():
                raise InsufficientRemainingError(count, connection.execute(REMAINING, (self.rows[kind],)).fetchone()[0])

    def counters(self) -> dict[str, tuple[int, int, int]]:
        """Per kind of this object's spaces: (next, accounted, skipped)."""
        self.set_up()
        kinds = {row: kind for kind, row in self.rows.items() if kind in self.spaces}
        with self.database.connection(self.label) as connection:
            query = "SELECT kind, next, accounted, skipped FROM uniquerand_v5_counters WHERE kind = ANY(%s)"
            rows = connection.execute(query, (list(kinds),)).fetchall()
        return {kinds[row]: tuple(values) for row, *values in rows}

    def account(self, unserved: dict[str, tuple[int, int]]) -> None:
        if self.database.closed:
            # This process ended its use of the database: its leases stay open, held while it lives.
            return
        with self.database.transaction(self.label) as connection:
            for kind, (leased, served) in unserved.items():
                connection.execute(
                    "UPDATE uniquerand_v5_counters SET accounted = accounted + %s, skipped = skipped + %s "
                    "WHERE kind = %s",
                    (leased, leased - served, self.rows[kind]),
                )
            # Only this object's rows: another named space's, or the stage's own, leases are still served here.
            connection.execute(
                "UPDATE uniquerand_v5_leases SET open = false WHERE holder = %s AND open AND kind = ANY(%s)",
                (this_holder(), list(self.rows.values())),
            )
            connection.execute(
                "DELETE FROM uniquerand_v5_holders WHERE holder = %(holder)s AND NOT EXISTS "
                "(SELECT 1 FROM uniquerand_v5_leases WHERE holder = %(holder)s AND open)",
                {"holder": this_holder()},
            )

    def heartbeat(self) -> None:
        """Renews this process's heartbeat if it holds open leases; closes those whose COMMIT's answer was lost."""
        unknown = self._heartbeat.get().unknown
        closing = list(unknown)
        with self.database.transaction(self.label) as connection:
            self._close_unknown(connection, closing)
            connection.execute(
                "UPDATE uniquerand_v5_holders SET heartbeat = now() WHERE holder = %(holder)s AND EXISTS "
                "(SELECT 1 FROM uniquerand_v5_leases WHERE holder = %(holder)s AND open)",
                {"holder": this_holder()},
            )
        del unknown[: len(closing)]

    def _space_of(self, kind: NumberKind) -> dict[str, object]:
        space = self.spaces[kind]
        return {"kind": self.rows[kind], "low": space.low, "high": space.high, "decimals": space.decimals}

    def set_up(self) -> None:
        def create_counters(connection: Any) -> None:
            # Never DDL or a conflicting insert on what exists: the leases of other hosts would wait on it.
            if not exists(connection, "uniquerand_v5_leases_open"):
                connection.execute(OPEN_LEASES_INDEX)
            for kind in KINDS:
                space = self.stage_spaces[kind]
                connection.execute(
                    "INSERT INTO uniquerand_v5_counters (kind, low, high, decimals) "
                    "SELECT %(kind)s, %(low)s, %(high)s, %(decimals)s "
                    "WHERE NOT EXISTS (SELECT 1 FROM uniquerand_v5_counters WHERE kind = %(kind)s)",
                    {"kind": kind, "low": space.low, "high": space.high, "decimals": space.decimals},
                )

        self.database.set_up(self.label, SCHEMA, self.stage_spaces, create_counters)


class _Heartbeat:
    """This process's heartbeat renewer, started with its first lease: one small query every HEARTBEAT_EVERY
    seconds, which renews the heartbeat while this process holds open leases."""

    def __init__(self, counters: PostgresCounters) -> None:
        self.counters = counters
        self.running = False
        # Leases of this process whose COMMIT's answer was lost (see `PostgresCounters.lease`).
        self.unknown: list[tuple[str, int]] = []

    def start(self) -> None:
        if self.running:
            return
        self.running = True
        try:
            runtime.start_background(f"{self.counters.label}-heartbeat", self._run)
        except RuntimeError:  # the interpreter is shutting down
            self.running = False

    def _run(self) -> None:
        while True:
            time.sleep(HEARTBEAT_EVERY)
            # A database that is away: the next round tries again.
            with suppress(Exception):
                self.counters.heartbeat()
