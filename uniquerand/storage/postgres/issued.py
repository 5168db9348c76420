"""PostgresStore: /v3 on PostgreSQL. Every issued code is a row of a table per type in a database that several
hosts may share.

Concurrency: the PRIMARY KEY is the uniqueness check: `INSERT ... ON CONFLICT DO NOTHING RETURNING` returns
only the codes no transaction of any host had, and a concurrent insert of the same code waits for the other
transaction's outcome. Within a process, requests are group-committed: those that arrive together share one
transaction (`group_commit`).
Durability: a code is returned only after its transaction's COMMIT returned, on a connection with
`synchronous_commit=on`. A COMMIT whose answer is lost fails the request: if it did commit, its codes are
burned (recorded, never served).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from uniquerand.numbers import KINDS, NumberKind
from uniquerand.storage import runtime
from uniquerand.storage.contract import Issued, Prefilling, Store, StoreBusyError, StoreSettings
from uniquerand.storage.group_commit import GroupCommitter
from uniquerand.storage.picking import pick_unused
from uniquerand.storage.postgres.database import Database
from uniquerand.storage.postgres.schema import Table

PREFILL_CHUNK = 50_000
TABLES = {kind: f"uniquerand_v3_{kind}" for kind in KINDS}
SCHEMA = [Table(table, (("code", "bigint", "NOT NULL"),), ("code",)) for table in TABLES.values()]
# A code another transaction has inserted and not committed yet is skipped (its advisory lock is held), never
# waited for: two hosts' groups that each waited for a code the other inserted would deadlock, and PostgreSQL
# would end it by failing one group whole. (Codes of both types share the lock keys: a float and an int of the
# same code in flight at once make one of them draw again, nothing more.)
CLAIM_ONE = {
    kind: f"INSERT INTO {table} (code) SELECT code FROM (SELECT %s::bigint AS code) AS drawn "
    "WHERE pg_try_advisory_xact_lock(code) ON CONFLICT DO NOTHING"
    for kind, table in TABLES.items()
}
# A group's single numbers in one statement (each a draw of its own; the same lock rule as CLAIM_ONE).
CLAIM_EACH = {
    kind: f"INSERT INTO {table} (code) SELECT code FROM unnest(%s::bigint[]) AS drawn (code) "
    "WHERE pg_try_advisory_xact_lock(code) ON CONFLICT DO NOTHING RETURNING code"
    for kind, table in TABLES.items()
}
# One statement for a whole round of draws; RETURNING names the codes that were new.
CLAIM_MANY = {
    kind: f"INSERT INTO {table} (code) SELECT unnest(%s::bigint[]) ON CONFLICT DO NOTHING RETURNING code"
    for kind, table in TABLES.items()
}


def insert_new_codes(connection: Any, kind: NumberKind, codes: list[int]) -> list[int]:
    """Inserts distinct `codes`, returning those that were new, in the order given (the draw order)."""
    inserted = {code for (code,) in connection.execute(CLAIM_MANY[kind], (codes,)).fetchall()}
    return [code for code in codes if code in inserted]


class PostgresStore(Store, Prefilling):
    def __init__(self, settings: StoreSettings, database: Database) -> None:
        super().__init__(settings)
        self.database = database
        self._committer = runtime.PerProcess(self._new_committer)
        # One function per kind: the committer runs the items of one function that meet in a group as one call.
        self._claim_each = {kind: partial(self._claim_group, kind) for kind in KINDS}

    def issue(self, kind: NumberKind, count: int = 1) -> Issued:
        self._set_up()
        if count == 1:
            # The group's single numbers as one statement (one round trip, no BEGIN or COMMIT: `one_statement`);
            # a draw that met a used code takes the general path, which draws again.
            code = self._committer.get().submit_batched(self._claim_each[kind], None, one_statement=True)
            if code is not None:
                return Issued([code])
            job = lambda connection: self._claim_one(connection, kind)  # noqa: E731
            return Issued(self._committer.get().submit(job, writes_once=True))
        return Issued(self._committer.get().submit(lambda connection: self._claim(connection, kind, count)))

    def prefill(self, kind: NumberKind, count: int) -> None:
        for start in range(0, count, PREFILL_CHUNK):
            self.issue(kind, min(PREFILL_CHUNK, count - start))

    def prepare(self) -> None:
        self._set_up()

    def check_ready(self) -> None:
        self._set_up()
        self.database.check(self.label)

    def stats(self) -> dict[str, dict[str, int]]:
        self._set_up()
        result = {}
        with self.database.connection(self.label) as connection:
            for kind in KINDS:
                space = self.spaces[kind]
                issued = self._count(connection, kind)
                result[kind] = {"issued": issued, "space_size": space.size, "remaining": space.size - issued}
        return result

    def _claim_group(self, kind: NumberKind, connection: Any, items: list[None]) -> list[int | None]:
        """One draw per item, inserted by one statement: the new code of each item, or None for an item whose
        draw was used (or drawn twice in the group, or in flight elsewhere)."""
        space = self.spaces[kind]
        codes = [space.draw() for _ in items]
        inserted = {code for (code,) in connection.execute(CLAIM_EACH[kind], (codes,)).fetchall()}
        answers: list[int | None] = []
        for code in codes:
            answers.append(code if code in inserted else None)
            inserted.discard(code)  # a code drawn twice serves one item
        return answers

    def _claim_one(self, connection: Any, kind: NumberKind) -> list[int]:
        """The common request: one draw, one statement. A used code takes the general path, in a savepoint:
        its statements may fail without failing the rest of the group."""
        code = self.spaces[kind].draw()
        if connection.execute(CLAIM_ONE[kind], (code,)).rowcount == 1:
            return [code]
        with connection.transaction():  # a savepoint: in the group's transaction already
            return self._claim(connection, kind, 1)

    def _claim(self, connection: Any, kind: NumberKind, count: int) -> list[int]:
        space, table = self.spaces[kind], TABLES[kind]
        # Near the end of the space only, the exact pick: the used codes counted and listed by one statement,
        # so that other hosts' commits between two statements cannot make them disagree. Read again after
        # each claim of this job.
        used: list[int] | None = None

        def used_codes() -> list[int]:
            nonlocal used
            if used is None:
                query = f"SELECT code FROM {table} WHERE code BETWEEN %s AND %s ORDER BY code"
                used = [code for (code,) in connection.execute(query, (space.low, space.high))]
            return used

        def claim(code: int) -> bool:
            nonlocal used
            used = None
            return connection.execute(CLAIM_ONE[kind], (code,)).rowcount == 1

        return pick_unused(
            space,
            count,
            self.max_attempts,
            claim,
            lambda: len(used_codes()),
            used_codes,
            lambda codes: insert_new_codes(connection, kind, codes),
        )

    def _count(self, connection: Any, kind: NumberKind) -> int:
        space = self.spaces[kind]
        query = f"SELECT count(*) FROM {TABLES[kind]} WHERE code BETWEEN %s AND %s"
        return connection.execute(query, (space.low, space.high)).fetchone()[0]

    def _set_up(self) -> None:
        self.database.set_up(self.label, SCHEMA, self.spaces)

    def _new_committer(self) -> GroupCommitter:
        # psycopg waits cooperatively under gevent: the writer needs no OS thread of its own.
        target = self.database.target("numbers", self.label)
        return GroupCommitter([target], self.lock_timeout, lambda: StoreBusyError.of(self.label), offload=False)
