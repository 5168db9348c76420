"""SqliteSpaceCatalog: /v5's named spaces in its counters.db (table `spaces`), each created with its counter in
one transaction, so a crash leaves a space whole or not at all, and two processes creating one name at once
make one space (the PRIMARY KEY decides; the loser reads the winner's)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

from uniquerand.numbers import NumberSpace
from uniquerand.storage import runtime
from uniquerand.storage.spaces import SpaceConflictError, SpaceRecord
from uniquerand.storage.sqlite.counters import SqliteCounters
from uniquerand.storage.sqlite.database import transaction

COLUMNS = "name, kind, low, high, decimals, created"


class SqliteSpaceCatalog:
    def __init__(self, counters: SqliteCounters) -> None:
        self.stage_counters = counters
        self.label = counters.label

    def create(self, name: str, space: NumberSpace) -> tuple[SpaceRecord, bool]:
        created = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        record = SpaceRecord(name, space, created)
        with self.stage_counters.database() as connection:
            # A durable write, which may wait for another process's: off gevent's loop.
            inserted, existing = runtime.run_blocking(self._create, connection, record)
        if inserted:
            return record, True
        if existing.space != space:
            raise SpaceConflictError(
                f"A space named {name!r} exists with another definition; a space's range never changes."
            )
        return existing, False

    def _create(self, connection: sqlite3.Connection, record: SpaceRecord) -> tuple[bool, SpaceRecord | None]:
        space = record.space
        with transaction(connection):
            inserted = connection.execute(
                f"INSERT INTO spaces ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (record.name, space.kind, space.low, space.high, space.decimals, record.created),
            ).rowcount
            if inserted:
                connection.execute(
                    "INSERT INTO counters (kind, low, high, decimals) VALUES (?, ?, ?, ?)",
                    (record.row, space.low, space.high, space.decimals),
                )
                return True, None
            return False, self._get(connection, record.name)

    def get(self, name: str) -> SpaceRecord | None:
        with self.stage_counters.database() as connection:
            return self._get(connection, name)

    def page(self, after: str, limit: int) -> list[SpaceRecord]:
        query = f"SELECT {COLUMNS} FROM spaces WHERE name > ? ORDER BY name LIMIT ?"
        with self.stage_counters.database() as connection:
            return [self._record(row) for row in connection.execute(query, (after, limit)).fetchall()]

    def levels(self, only: str | None = None) -> list[tuple[str, str, int, int]]:
        """(name, type, size, counter) of every space (or of the space `only`), in one read."""
        query = (
            "SELECT s.name, s.kind, s.high - s.low + 1, c.next "
            "FROM spaces s JOIN counters c ON c.kind = 'space:' || s.name"
        )
        with self.stage_counters.database() as connection:
            if only is None:
                return connection.execute(query).fetchall()
            return connection.execute(query + " WHERE s.name = ?", (only,)).fetchall()

    def counters(self, record: SpaceRecord) -> SqliteCounters:
        return self.stage_counters.for_space(record.row, record.space)

    def _get(self, connection: sqlite3.Connection, name: str) -> SpaceRecord | None:
        row = connection.execute(f"SELECT {COLUMNS} FROM spaces WHERE name = ?", (name,)).fetchone()
        return None if row is None else self._record(row)

    def _record(self, row: tuple) -> SpaceRecord:
        return SpaceRecord.from_row(row, self.label)
