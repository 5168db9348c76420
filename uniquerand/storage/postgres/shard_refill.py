"""Refilling /v4's PostgreSQL pools: the tables, and a refill of one shard as one transaction per chunk that
records its draws in the kind's ledger first (only codes new to the ledger count) and then adds them to the
shard's pool. Ledger and pool commit together, so a crash loses nothing and no code is ever in two pools;
a transaction-scoped advisory lock per shard lets one refill of a shard run at a time across every host.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from uniquerand.logs import event
from uniquerand.numbers import KINDS, NumberKind, NumberSpace
from uniquerand.storage import runtime
from uniquerand.storage.contract import InsufficientRemainingError, SpaceExhaustedError
from uniquerand.storage.picking import pick_unused
from uniquerand.storage.postgres.database import SCHEMA_LOCK, Database
from uniquerand.storage.postgres.schema import Table
from uniquerand.storage.sqlite.shard_files import shard_names
from uniquerand.storage.sqlite.shard_refill import REFILL_RETRY_DELAY, FillReport

log = logging.getLogger(__name__)
REFILL_CHUNK = 20_000
SHARDS = "uniquerand_v4_shards"
POOL = {kind: f"uniquerand_v4_pool_{kind}" for kind in KINDS}
LEDGER = {kind: f"uniquerand_v4_ledger_{kind}" for kind in KINDS}
# `id` numbers a shard's rows in the order they were drawn (1, 2, ... per shard): claims take the oldest.
# `filled` counts every code a shard was given (rows added, and prefilled codes), so that a shard's served
# count is filled minus its rows, and the ledger's size is the sum of its kind's `filled`: no counter is
# written by a claim, which would make one row every host waits on.
SCHEMA = (
    [Table(LEDGER[kind], (("code", "bigint", "NOT NULL"),), ("code",)) for kind in KINDS]
    + [
        Table(
            POOL[kind],
            (("shard", "smallint", "NOT NULL"), ("id", "bigint", "NOT NULL"), ("code", "bigint", "NOT NULL")),
            ("shard", "id"),
        )
        for kind in KINDS
    ]
    + [
        Table(
            SHARDS,
            (
                ("name", "text", "NOT NULL"),
                ("kind", "text", "NOT NULL"),
                ("filled", "bigint", "NOT NULL DEFAULT 0"),
                ("last_refill_at", "double precision", ""),
                ("last_refill_added", "bigint", ""),
                ("last_refill_seconds", "double precision", ""),
            ),
            ("name",),
        )
    ]
)


def shard_index(name: str) -> int:
    return int(name.rsplit("_", 1)[1].split(".")[0])


def kind_of(name: str) -> NumberKind:
    return "int" if name.startswith("int_") else "float"


def refill_lock(name: str) -> tuple[int, int]:
    """The advisory lock (two int4 keys) of shard `name`'s refills."""
    return SCHEMA_LOCK, zlib.crc32(name.encode()) & 0x7FFFFFFF


@dataclass
class _Scheduled:
    guard: threading.Lock = field(default_factory=threading.Lock)
    running: set[str] = field(default_factory=set)
    failed_at: dict[str, float] = field(default_factory=dict)


class PostgresShardRefiller:
    def __init__(
        self, database: Database, spaces: dict[NumberKind, NumberSpace], label: str, max_attempts: int, shard_size: int
    ) -> None:
        self.database = database
        self.spaces = spaces
        self.label = label
        self.max_attempts = max_attempts
        self.shard_size = shard_size
        self._scheduled = runtime.PerProcess(_Scheduled)

    def schedule(self, name: str) -> None:
        """A refill of shard `name` in the background, unless one runs in this process or one failed less than
        REFILL_RETRY_DELAY ago (another host's running refill makes this one return at once)."""
        scheduled = self._scheduled.get()
        with scheduled.guard:
            if name in scheduled.running:
                return
            if time.monotonic() - scheduled.failed_at.get(name, -REFILL_RETRY_DELAY) < REFILL_RETRY_DELAY:
                return
            scheduled.running.add(name)
        try:
            runtime.start_background(f"{self.label}-refill", self._refill_in_background, scheduled, name)
        except RuntimeError:
            scheduled.running.discard(name)

    def _refill_in_background(self, scheduled: _Scheduled, name: str) -> None:
        try:
            self.refill(name, self.shard_size, wait=False)
        except Exception:
            scheduled.failed_at[name] = time.monotonic()
            fields = {"stage": self.label, "shard": name}
            log.exception("refill_failed", extra={"event": "refill_failed", "fields": fields})
        finally:
            scheduled.running.discard(name)

    def refill(
        self, name: str, target: int, wait: bool = False, progress: Callable[[str, int, int], None] | None = None
    ) -> FillReport | None:
        """Tops shard `name` up to `target` rows, a chunk per transaction. None if another refill of the shard
        runs (with `wait`, after waiting up to the connection's lock_timeout for it)."""
        started, added, available = time.monotonic(), 0, 0
        while True:
            try:
                with self.database.transaction(self.label) as connection:
                    if not self._lock(connection, name, wait):
                        return None
                    query = f"SELECT count(*) FROM {POOL[kind_of(name)]} WHERE shard = %s"
                    available = connection.execute(query, (shard_index(name),)).fetchone()[0]
                    if available >= target:
                        break
                    if not added:
                        event(log, "refill_started", stage=self.label, shard=name, available=available, target=target)
                    codes = self._reserve(connection, kind_of(name), min(REFILL_CHUNK, target - available))
                    if not codes:
                        break
                    self._add_to_pool(connection, name, codes, time.monotonic() - started)
            except _Raced:
                break
            added += len(codes)
            available += len(codes)
            if progress:
                progress(name, available, target)
        if added:
            seconds = round(time.monotonic() - started, 3)
            fields = {"shard": name, "added": added, "available": available, "seconds": seconds}
            event(log, "refill_finished", stage=self.label, **fields)
        return FillReport(name, added, available)

    @staticmethod
    def _lock(connection: Any, name: str, wait: bool) -> bool:
        """Takes shard `name`'s refill lock for the transaction; False if another holds it (without `wait`)."""
        if wait:
            connection.execute("SELECT pg_advisory_xact_lock(%s, %s)", refill_lock(name))
            return True
        return connection.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", refill_lock(name)).fetchone()[0]

    def fill_shards(self, target: int, progress: Callable[[str, int, int], None] | None = None) -> list[FillReport]:
        return [self.refill(name, target, wait=True, progress=progress) for kind in KINDS for name in shard_names(kind)]

    def top_up_at_start(self, refill_at: int) -> None:
        """Before a worker serves: tops up every shard below the refill mark (one worker of all hosts at a time
        per shard: the others wait for it, then find the shard full)."""
        for kind in KINDS:
            for name in shard_names(kind):
                with self.database.connection(self.label) as connection:
                    query = f"SELECT count(*) FROM {POOL[kind]} WHERE shard = %s"
                    if connection.execute(query, (shard_index(name),)).fetchone()[0] >= max(refill_at, 1):
                        continue
                self.refill(name, self.shard_size, wait=True)

    def prefill(self, kind: NumberKind, count: int) -> None:
        """Records `count` codes as issued: in the ledger and in the first shard's `filled`, in no pool."""
        name, done = shard_names(kind)[0], 0
        while done < count:
            try:
                with self.database.transaction(self.label) as connection:
                    self._lock(connection, name, wait=True)
                    codes = self._reserve(connection, kind, min(REFILL_CHUNK * 5, count - done))
                    query = f"UPDATE {SHARDS} SET filled = filled + %s WHERE name = %s"
                    connection.execute(query, (len(codes), name))
            except _Raced:
                codes = []
            if not codes:
                raise InsufficientRemainingError(count, done)
            done += len(codes)

    def _reserve(self, connection: Any, kind: NumberKind, wanted: int) -> list[int]:
        """Up to `wanted` codes newly recorded in the kind's ledger (fewer only at the end of the space), in the
        order they were drawn."""
        space, ledger = self.spaces[kind], LEDGER[kind]
        # One reservation of the kind at a time, across hosts: the count read below stays true while this one
        # draws (the exact pick near the end relies on it), and two refills never wait on each other's rows.
        connection.execute("SELECT pg_advisory_xact_lock(%s, %s)", refill_lock(f"ledger {kind}"))
        query = f"SELECT coalesce(sum(filled), 0)::bigint FROM {SHARDS} WHERE kind = %s"
        recorded = connection.execute(query, (kind,)).fetchone()[0]
        wanted = min(wanted, space.size - recorded)
        if wanted <= 0:
            return []
        new = 0

        def claim(code: int) -> bool:
            nonlocal new
            inserted = connection.execute(
                f"INSERT INTO {ledger} (code) VALUES (%s) ON CONFLICT DO NOTHING", (code,)
            ).rowcount
            new += inserted
            return inserted == 1

        def claim_many(codes: list[int]) -> list[int]:
            nonlocal new
            query = f"INSERT INTO {ledger} (code) SELECT unnest(%s::bigint[]) ON CONFLICT DO NOTHING RETURNING code"
            inserted = {code for (code,) in connection.execute(query, (codes,)).fetchall()}
            new += len(inserted)
            return [code for code in codes if code in inserted]

        def used_ascending() -> Iterator[int]:
            query = f"SELECT code FROM {ledger} WHERE code BETWEEN %s AND %s ORDER BY code"
            yield from (code for (code,) in connection.execute(query, (space.low, space.high)))

        try:
            count_used = lambda: recorded + new  # noqa: E731
            return pick_unused(space, wanted, self.max_attempts, claim, count_used, used_ascending, claim_many)
        except (SpaceExhaustedError, InsufficientRemainingError):
            # Another host's refill took the last codes since `recorded` was read: this chunk adds none (its
            # transaction rolls back), and the next refill counts again.
            raise _Raced from None

    def _add_to_pool(self, connection: Any, name: str, codes: list[int], seconds: float) -> None:
        base = connection.execute(
            f"UPDATE {SHARDS} SET filled = filled + %s, last_refill_at = extract(epoch FROM now()), "
            "last_refill_added = %s, last_refill_seconds = %s WHERE name = %s RETURNING filled - %s",
            (len(codes), len(codes), seconds, name, len(codes)),
        ).fetchone()[0]
        connection.execute(
            f"INSERT INTO {POOL[kind_of(name)]} (shard, id, code) "
            "SELECT %s, %s + position, code FROM unnest(%s::bigint[]) WITH ORDINALITY AS drawn(code, position)",
            (shard_index(name), base, codes),
        )


class _Raced(Exception):
    pass
