"""/v5's recorded replies (`storage.replies`) in PostgreSQL: table uniquerand_v5_replies, shared by every host,
so a retry that reaches another host replays the same answer."""

from __future__ import annotations

import json

from uniquerand.storage import runtime
from uniquerand.storage.postgres.database import Database
from uniquerand.storage.postgres.schema import Table, exists
from uniquerand.storage.replies import ReplyStore, new_committer

TABLE = "uniquerand_v5_replies"
SCHEMA = [
    Table(
        TABLE,
        (
            ("client", "text", "NOT NULL"),
            ("key", "text", "NOT NULL"),
            ("fingerprint", "text", "NOT NULL"),
            ("owner", "text", "NOT NULL"),
            ("claimed", "double precision", "NOT NULL"),
            ("expires", "double precision", "NOT NULL"),
            ("status", "integer", ""),
            ("body", "bytea", ""),
        ),
        ("client", "key"),
    )
]
EXPIRES_INDEX = f"{TABLE}_expires"
COLUMNS = tuple(name for name, _, _ in SCHEMA[0].columns)


# A new row, or one that expired or whose claim went stale (same request, no answer, `stale` seconds old).
TAKE_OVER = (
    "ON CONFLICT (client, key) DO UPDATE SET fingerprint = excluded.fingerprint, owner = excluded.owner, "
    "claimed = excluded.claimed, expires = excluded.expires, status = excluded.status, body = excluded.body "
    "WHERE r.expires <= excluded.claimed OR (r.body IS NULL "
    "AND r.fingerprint = excluded.fingerprint AND r.claimed < excluded.claimed - %s) "
    "RETURNING client, key, owner"
)


class PostgresReplySql:
    claim = (
        f"INSERT INTO {TABLE} AS r (client, key, fingerprint, owner, claimed, expires) "
        f"VALUES (%s, %s, %s, %s, %s, %s) {TAKE_OVER}"
    )
    # One text and one parameter whatever the group's size: the rows as one JSON document (the json module
    # encodes it in C, where psycopg builds eight arrays an element at a time in Python). Every column is text
    # or a number; a body is the JSON text of a response, kept as its UTF-8 bytes.
    insert_rows = (
        f"INSERT INTO {TABLE} AS r (client, key, fingerprint, owner, claimed, expires, status, body) "
        "SELECT client, key, fingerprint, owner, claimed, expires, status, convert_to(body, 'UTF8') "
        "FROM json_to_recordset(%s::json) AS x(client text, key text, fingerprint text, owner text, "
        f"claimed float8, expires float8, status integer, body text) {TAKE_OVER}"
    )
    select = f"SELECT fingerprint, owner, claimed, status, body FROM {TABLE} WHERE client = %s AND key = %s"
    record = f"UPDATE {TABLE} SET status = %s, body = %s WHERE client = %s AND key = %s AND owner = %s AND body IS NULL"
    release = f"DELETE FROM {TABLE} WHERE client = %s AND key = %s AND owner = %s AND body IS NULL"
    purge = (
        f"DELETE FROM {TABLE} WHERE (client, key) IN "
        f"(SELECT client, key FROM {TABLE} WHERE expires <= %s ORDER BY expires LIMIT %s FOR UPDATE SKIP LOCKED)"
    )

    def insert(self, rows: list[tuple], stale: float) -> tuple[str, tuple]:
        document = [dict(zip(COLUMNS, (*row[:-1], row[-1].decode("utf-8")), strict=True)) for row in rows]
        return self.insert_rows, (json.dumps(document), stale)


def _index(connection) -> None:
    # Made once, never re-issued: DDL on the table would lock out the other hosts' claims.
    if not exists(connection, EXPIRES_INDEX):
        connection.execute(f"CREATE INDEX {EXPIRES_INDEX} ON {TABLE} (expires)")


def postgres_replies(database: Database, label: str, lock_timeout: float, ttl: float, stale: float) -> ReplyStore:
    set_up_label = f"{label} replies"

    def set_up() -> None:
        database.set_up(set_up_label, SCHEMA, {}, then=_index)

    def committer(durable: bool):
        def build():
            set_up()
            # psycopg waits cooperatively under gevent: the writer needs no OS thread of its own.
            return new_committer(database.target(TABLE, label, durable), lock_timeout, label, offload=False)

        return runtime.PerProcess(build)

    def read(statement: str, args: tuple):
        set_up()  # done once per process: a set lookup after that
        with database.connection(label) as connection:
            return connection.execute(statement, args).fetchone()

    return ReplyStore(PostgresReplySql(), committer(False), committer(True), read, label, ttl, stale)
