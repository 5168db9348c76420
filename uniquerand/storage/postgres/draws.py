"""/v5's signed draws (`storage.draws`) in PostgreSQL, shared by every host: a draw signed on one host is fetched
from any, and the serials of a space count the draws of every host without a gap."""

from __future__ import annotations

import contextlib

from uniquerand.storage import runtime
from uniquerand.storage.draws import SignedDraws
from uniquerand.storage.postgres.database import Database
from uniquerand.storage.postgres.schema import Table
from uniquerand.storage.replies import new_committer

SCHEMA = [
    Table("uniquerand_v5_draw_serials", (("space", "text", "NOT NULL"), ("last", "bigint", "NOT NULL")), ("space",)),
    Table(
        "uniquerand_v5_draws",
        (("space", "text", "NOT NULL"), ("serial", "bigint", "NOT NULL"), ("body", "bytea", "NOT NULL")),
        ("space", "serial"),
    ),
    Table(
        "uniquerand_v5_signing_keys",
        (
            ("kid", "text", "NOT NULL"),
            ("jwk", "text", "NOT NULL"),
            ("first_used", "timestamp with time zone", "NOT NULL DEFAULT now()"),
        ),
        ("kid",),
    ),
]


class PostgresDrawSql:
    next_serials = (
        "INSERT INTO uniquerand_v5_draw_serials (space, last) VALUES (%s, %s) ON CONFLICT (space) "
        "DO UPDATE SET last = uniquerand_v5_draw_serials.last + excluded.last RETURNING last"
    )
    insert = "INSERT INTO uniquerand_v5_draws (space, serial, body) VALUES (%s, %s, %s)"
    select = "SELECT body FROM uniquerand_v5_draws WHERE space = %s AND serial = %s"
    publish_key = "INSERT INTO uniquerand_v5_signing_keys (kid, jwk) VALUES (%s, %s) ON CONFLICT DO NOTHING"
    keys = "SELECT jwk FROM uniquerand_v5_signing_keys ORDER BY first_used, kid"


def postgres_draws(database: Database, label: str, lock_timeout: float) -> SignedDraws:
    set_up_label = f"{label} draws"

    def set_up() -> None:
        database.set_up(set_up_label, SCHEMA, {})

    def committer():
        set_up()
        return new_committer(database.target("uniquerand_v5_draws", label), lock_timeout, label, offload=False)

    @contextlib.contextmanager
    def reader():
        set_up()
        with database.connection(label) as connection:
            yield connection

    return SignedDraws(PostgresDrawSql(), runtime.PerProcess(committer), reader, label)
