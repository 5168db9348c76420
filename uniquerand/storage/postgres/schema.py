"""The tables of the PostgreSQL stores as this release makes them (`Table`: created if missing, checked
whoever made it), and the settings each stage's records are tied to (`uniquerand_meta`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from uniquerand.storage.contract import StoreCorruptError


def space_settings(spaces: dict[str, Any]) -> dict[str, str]:
    """The settings a stage's records are tied to: each kind's range and the float grid, as recorded."""
    return {f"space_{kind}": f"{space.low}..{space.high}/{space.decimals}" for kind, space in spaces.items()}


SETTING_NAMES = {"space_int": "INT_MIN/INT_MAX", "space_float": "FLOAT_MIN/FLOAT_MAX/FLOAT_DECIMALS"}


def check_recorded(connection: Any, stage: str, expected: dict[str, str], label: str) -> None:
    """Records `expected` settings for `stage` where the database has none, and refuses one whose recorded
    settings differ: its numbers were drawn or counted in another space (nothing is changed: the caller's
    transaction rolls back)."""
    rows = dict(connection.execute("SELECT name, value FROM uniquerand_meta WHERE stage = %s", (stage,)).fetchall())
    for name, value in expected.items():
        if name not in rows:
            connection.execute(
                "INSERT INTO uniquerand_meta (stage, name, value) VALUES (%s, %s, %s)", (stage, name, value)
            )
        elif rows[name] != value:
            setting = SETTING_NAMES.get(name, name)
            raise StoreCorruptError(
                f"The {label} store's database was written with other settings ({setting}: {rows[name]}, this "
                f"server: {value}); serving it here could re-issue numbers. It was left as is."
            )


@dataclass(frozen=True)
class Table:
    """A table of ours: created if missing, and checked, whoever created it, to have exactly these columns and
    this primary key. A table of another application under our name (or of another release) would take our
    inserts through PostgreSQL's assignment casts, or without the PRIMARY KEY that makes them unique."""

    name: str
    # (column, type as format_type() spells it, the rest of its definition)
    columns: tuple[tuple[str, str, str], ...]
    primary_key: tuple[str, ...]

    def create(self, connection: Any) -> None:
        """Creates the table if it is missing, then checks it. Set-ups run one at a time (SCHEMA_LOCK), and an
        existing table is only read: DDL on it would lock out the other hosts' claims, or deadlock with them."""
        if not exists(connection, self.name):
            columns = ", ".join(f"{name} {kind} {extra}".strip() for name, kind, extra in self.columns)
            connection.execute(f"CREATE TABLE {self.name} ({columns}, PRIMARY KEY ({', '.join(self.primary_key)}))")
        found = connection.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (self.name,),
        ).fetchall()
        key = connection.execute(
            "SELECT array_agg(a.attname::text ORDER BY k.position) FROM pg_index i "
            "CROSS JOIN unnest(i.indkey) WITH ORDINALITY AS k(attnum, position) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = to_regclass(%s) AND i.indisprimary",
            (self.name,),
        ).fetchone()[0]
        if [tuple(row) for row in found] != [(name, kind) for name, kind, _ in self.columns] or tuple(
            key or ()
        ) != self.primary_key:
            raise StoreCorruptError(
                f"The table {self.name} in the database is not the one this release made (its columns or primary "
                "key differ); it was left as is."
            )


def exists(connection: Any, relation: str) -> bool:
    """True if the table or index `relation` exists (in the search path)."""
    return connection.execute("SELECT to_regclass(%s) IS NOT NULL", (relation,)).fetchone()[0]


META = Table(
    "uniquerand_meta",
    (("stage", "text", "NOT NULL"), ("name", "text", "NOT NULL"), ("value", "text", "NOT NULL")),
    ("stage", "name"),
)
