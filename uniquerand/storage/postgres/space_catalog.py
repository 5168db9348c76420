"""PostgresSpaceCatalog: /v5's named spaces in PostgreSQL (table uniquerand_v5_spaces), which every host on the
database shares. A space is created with its counter row in one transaction, so a crash leaves it whole or not
at all; two hosts creating one name at once make one space: the PRIMARY KEY makes the second INSERT wait for
the first's COMMIT, then do nothing, and the loser reads the winner's row."""

from __future__ import annotations

from typing import Any

from uniquerand.numbers import NumberSpace
from uniquerand.storage.contract import StoreCorruptError
from uniquerand.storage.postgres.counters import PostgresCounters
from uniquerand.storage.spaces import SpaceConflictError, SpaceRecord

# `created` as the API gives it (ISO 8601, UTC, milliseconds), whatever the session's time zone.
COLUMNS = (
    "name, kind, low, high, decimals, "
    """to_char(created AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""
)
CREATE = (
    """
INSERT INTO uniquerand_v5_spaces (name, kind, low, high, decimals) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (name) DO NOTHING
RETURNING """
    + COLUMNS
)


class PostgresSpaceCatalog:
    def __init__(self, counters: PostgresCounters) -> None:
        self.stage_counters = counters
        self.database = counters.database
        self.label = counters.label

    def create(self, name: str, space: NumberSpace) -> tuple[SpaceRecord, bool]:
        self.stage_counters.set_up()
        with self.database.transaction(self.label) as connection:
            created = connection.execute(CREATE, (name, space.kind, space.low, space.high, space.decimals)).fetchone()
            if created is not None:
                record = self._record(created)
                connection.execute(
                    "INSERT INTO uniquerand_v5_counters (kind, low, high, decimals) VALUES (%s, %s, %s, %s)",
                    (record.row, space.low, space.high, space.decimals),
                )
                # Returned once the block's COMMIT succeeds; a COMMIT whose answer is lost raises instead.
                return record, True
            # Read committed: the row that made the INSERT do nothing is committed, so this statement sees it.
            existing = self._get(connection, name)
        if existing is None:
            raise StoreCorruptError(f"The {self.label} store's space {name!r} could not be read back.")
        if existing.space != space:
            raise SpaceConflictError(
                f"A space named {name!r} exists with another definition; a space's range never changes."
            )
        return existing, False

    def get(self, name: str) -> SpaceRecord | None:
        self.stage_counters.set_up()
        with self.database.connection(self.label) as connection:
            return self._get(connection, name)

    def page(self, after: str, limit: int) -> list[SpaceRecord]:
        self.stage_counters.set_up()
        query = f"SELECT {COLUMNS} FROM uniquerand_v5_spaces WHERE name > %s ORDER BY name LIMIT %s"
        with self.database.connection(self.label) as connection:
            return [self._record(row) for row in connection.execute(query, (after, limit)).fetchall()]

    def levels(self, only: str | None = None) -> list[tuple[str, str, int, int]]:
        """(name, type, size, counter) of every space (or of the space `only`), in one read."""
        self.stage_counters.set_up()
        query = (
            "SELECT s.name, s.kind, s.high - s.low + 1, c.next FROM uniquerand_v5_spaces s "
            "JOIN uniquerand_v5_counters c ON c.kind = 'space:' || s.name"
        )
        with self.database.connection(self.label) as connection:
            if only is None:
                return connection.execute(query).fetchall()
            return connection.execute(query + " WHERE s.name = %s", (only,)).fetchall()

    def counters(self, record: SpaceRecord) -> PostgresCounters:
        return self.stage_counters.for_space(record.row, record.space)

    def _get(self, connection: Any, name: str) -> SpaceRecord | None:
        row = connection.execute(f"SELECT {COLUMNS} FROM uniquerand_v5_spaces WHERE name = %s", (name,)).fetchone()
        return None if row is None else self._record(row)

    def _record(self, row: tuple) -> SpaceRecord:
        return SpaceRecord.from_row(row, self.label)
