"""ShardedPostgresStore: /v4 on PostgreSQL. Per type, two pools ("shards") of pre-drawn numbers as rows of one
table, refilled from the kind's ledger of every number ever pooled (`shard_refill`), shared by every host.

Concurrency: a claim is one statement, `DELETE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n)
RETURNING`: the rows it returns are locked by it, skipped by every other host's claim, and gone once it
commits. A batch claims its rows in one transaction, so it gets all of them or none. Claims of a process that
arrive together share one transaction (`group_commit`).
Durability: a claim is returned only after its COMMIT returned (`synchronous_commit=on`); a COMMIT whose
answer is lost fails the request and its rows stay claimed: burned, never served.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from typing import Any

from uniquerand.numbers import KINDS, NumberKind
from uniquerand.storage import runtime
from uniquerand.storage.contract import (
    InsufficientRemainingError,
    Issued,
    Prefilling,
    ShardsEmptyError,
    SpaceExhaustedError,
    Store,
    StoreBusyError,
    StoreSettings,
)
from uniquerand.storage.group_commit import GroupCommitter
from uniquerand.storage.postgres.database import Database
from uniquerand.storage.postgres.shard_refill import (
    POOL,
    SCHEMA,
    SHARDS,
    PostgresShardRefiller,
    refill_lock,
    shard_index,
)
from uniquerand.storage.sqlite.shard_files import shard_names
from uniquerand.storage.sqlite.shard_refill import FillReport

EMPTY_MESSAGE = "No available numbers. Shard is being refilled. Please retry shortly."
# The shard's `filled` comes back with the rows: its last row's id, from which the claim tells the level.
CLAIM = {
    kind: f"""
WITH claimed AS (
    DELETE FROM {POOL[kind]} WHERE shard = %(shard)s AND id IN (
        SELECT id FROM {POOL[kind]} WHERE shard = %(shard)s ORDER BY id LIMIT %(count)s FOR UPDATE SKIP LOCKED
    )
    RETURNING id, code
)
SELECT id, code, (SELECT filled FROM {SHARDS} WHERE name = %(name)s) FROM claimed ORDER BY id
"""
    for kind in KINDS
}


class _Short(Exception):
    """A batch found fewer rows than it needs: its claims are undone (its savepoint rolls back)."""


class ShardedPostgresStore(Store, Prefilling):
    def __init__(self, settings: StoreSettings, database: Database, *, shard_size: int, refill_at: int) -> None:
        super().__init__(settings)
        self.database = database
        self.refill_at = refill_at
        self.refiller = PostgresShardRefiller(database, self.spaces, self.label, self.max_attempts, shard_size)
        self._committers = runtime.PerProcess(
            lambda: {
                kind: GroupCommitter(
                    [database.target(kind, self.label)],
                    self.lock_timeout,
                    lambda: StoreBusyError.of(self.label),
                    offload=False,
                )
                for kind in KINDS
            }
        )
        # One function per kind: the committer runs the items of one function that meet in a group as one call.
        self._claim_each = {kind: partial(self._claim_group, kind) for kind in KINDS}

    def issue(self, kind: NumberKind, count: int = 1) -> Issued:
        """`count` codes with the shard each came from, durably claimed, never returned before."""
        self._set_up()
        committer = self._committers.get()[kind]
        if count == 1:
            # The group's single numbers as one claim from one shard (one round trip, no BEGIN or COMMIT:
            # `one_statement`); one the shard ran short of takes the general path, which tries every shard.
            claimed = committer.submit_batched(self._claim_each[kind], None, one_statement=True)
            if claimed is not None:
                return Issued([claimed[1]], [claimed[0]])
        try:
            # A single number's only write is its one successful claim; a batch may claim from both shards.
            claimed = committer.submit(lambda connection: self._claim(connection, kind, count), writes_once=count == 1)
        except _Short:
            self._raise_shortage(kind, count)
        return Issued([code for _, code in claimed], [name for name, _ in claimed])

    def prepare(self) -> None:
        self._set_up()
        self.refiller.top_up_at_start(self.refill_at)

    def check_ready(self) -> None:
        self._set_up()
        self.database.check(self.label)

    def prefill(self, kind: NumberKind, count: int) -> None:
        self._set_up()
        self.refiller.prefill(kind, count)
        for name in shard_names(kind):
            self.refiller.refill(name, self.refiller.shard_size, wait=True)

    def fill_shards(self, target: int, progress: Callable[[str, int, int], None] | None = None) -> list[FillReport]:
        self._set_up()
        return self.refiller.fill_shards(target, progress)

    def stats(self) -> dict[str, dict]:
        self._set_up()
        result: dict[str, dict] = {}
        with self.database.connection(self.label) as connection:
            for kind in KINDS:
                shards = {name: self._shard_stats(connection, name) for name in shard_names(kind)}
                ledger = sum(shard.pop("filled") for shard in shards.values())
                available = sum(shard["available"] for shard in shards.values())
                size = self.spaces[kind].size
                result[kind] = {
                    "issued": sum(shard["served"] for shard in shards.values()),
                    "space_size": size,
                    "remaining": size - ledger + available,
                    "ledger": ledger,
                    "shards": shards,
                }
        return result

    def _claim_group(self, kind: NumberKind, connection: Any, items: list[None]) -> list[tuple[str, int] | None]:
        """A row per item from one shard drawn at random, by one statement: (shard, code) per item, None for
        the items the shard had no row for."""
        names = shard_names(kind)
        name = names[random.randrange(len(names))]
        rows = connection.execute(
            CLAIM[kind], {"shard": shard_index(name), "count": len(items), "name": name}
        ).fetchall()
        if len(rows) < len(items) or (rows and rows[-1][2] - rows[-1][0] < self.refill_at):
            self.refiller.schedule(name)
        return [(name, code) for _, code, _ in rows] + [None] * (len(items) - len(rows))

    def _claim(self, connection: Any, kind: NumberKind, count: int) -> list[tuple[str, int]]:
        """(shard, code) of `count` rows claimed from the kind's shards, starting at one drawn at random (which
        spreads the load; the numbers are the pools' CSPRNG draws whichever shard serves them)."""
        names = shard_names(kind)
        start = random.randrange(len(names))
        claimed: list[tuple[str, int]] = []
        for name in names[start:] + names[:start]:
            parameters = {"shard": shard_index(name), "count": count - len(claimed), "name": name}
            rows = connection.execute(CLAIM[kind], parameters).fetchall()
            claimed += [(name, code) for _, code, _ in rows]
            # Unused rows lie above the claimed ids (claims take the oldest): filled minus the last id is the level.
            if len(claimed) < count or (rows and rows[-1][2] - rows[-1][0] < self.refill_at):
                self.refiller.schedule(name)
            if len(claimed) == count:
                return claimed
        raise _Short

    def _raise_shortage(self, kind: NumberKind, count: int) -> None:
        """Exhausted if fewer numbers remain than asked for (the ledger's and pools' counts are read from one
        snapshot: a refill commits both at once); else the pools are being refilled."""
        query = (
            f"SELECT %s - (SELECT coalesce(sum(filled), 0)::bigint FROM {SHARDS} WHERE kind = %s) "
            f"+ (SELECT count(*) FROM {POOL[kind]})"
        )
        with self.database.connection(self.label) as connection:
            remaining = connection.execute(query, (self.spaces[kind].size, kind)).fetchone()[0]
        if remaining < count:
            if count == 1:
                raise SpaceExhaustedError("All possible numbers have been used.")
            raise InsufficientRemainingError(count, remaining)
        for name in shard_names(kind):
            self.refiller.schedule(name)
        raise ShardsEmptyError(EMPTY_MESSAGE)

    @staticmethod
    def _shard_stats(connection: Any, name: str) -> dict:
        kind = "int" if name.startswith("int_") else "float"
        available = connection.execute(
            f"SELECT count(*) FROM {POOL[kind]} WHERE shard = %s", (shard_index(name),)
        ).fetchone()[0]
        filled, at, added, seconds = connection.execute(
            f"SELECT filled, last_refill_at, last_refill_added, last_refill_seconds FROM {SHARDS} WHERE name = %s",
            (name,),
        ).fetchone()
        classid, objid = refill_lock(name)
        refilling = connection.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid::bigint = %s "
            "AND objid::bigint = %s AND objsubid = 2 AND granted)",
            (classid, objid),
        ).fetchone()[0]
        return {
            "available": available,
            "served": filled - available,
            "filled": filled,
            "refilling": refilling,
            "last_refill": {"at": at, "added": added, "seconds": seconds},
        }

    def _set_up(self) -> None:
        def create_shards(connection: Any) -> None:
            for kind in KINDS:
                for name in shard_names(kind):
                    # Not ON CONFLICT: that would wait for a running refill's lock on the row.
                    connection.execute(
                        f"INSERT INTO {SHARDS} (name, kind) SELECT %(name)s, %(kind)s "
                        f"WHERE NOT EXISTS (SELECT 1 FROM {SHARDS} WHERE name = %(name)s)",
                        {"name": name, "kind": kind},
                    )

        self.database.set_up(self.label, SCHEMA, self.spaces, create_shards)
