"""ShardedSqliteStore: the design's fourth stage (/v4). Per type, two SQLite pools ("shards") of pre-drawn
numbers, refilled in the background from a ledger database of every number ever put into a pool
(`shard_refill`); the files and their checks are `shard_files`', the stats `shard_stats`'.

Concurrency: a claim is one `UPDATE ... RETURNING` statement, atomic across every process by SQLite's write
lock; the claims of a process that arrive together share one transaction and one fsync (`group_commit`),
and writers of every process take turns on a blocking flock of the shard. Single numbers, the typical
request, are grouped per kind: each group goes to a shard drawn at random, so each request is still served
by a random shard, with the commits of one writer instead of two.
Durability: WAL with synchronous=FULL: a claim is on disk before it is returned. A crash can lose numbers
(reserved but not yet in a shard, or claimed but not yet answered): gaps, never a number served twice.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from uniquerand.logs import event
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
    StoreCorruptError,
    StoreSettings,
    StoreUnavailableError,
)
from uniquerand.storage.group_commit import GroupCommitter
from uniquerand.storage.sqlite.shard_files import ShardFiles, count_available, ledger_count, ledger_name, shard_names
from uniquerand.storage.sqlite.shard_refill import FillReport, ShardRefiller
from uniquerand.storage.sqlite.shard_stats import sharded_stats
from uniquerand.storage.sqlite.target import SqliteTarget

log = logging.getLogger(__name__)
T = TypeVar("T")

EMPTY_MESSAGE = "No available numbers. Shard is being refilled. Please retry shortly."
EXHAUSTED_MESSAGE = "All possible numbers have been used."
CLAIM = (
    "UPDATE pool SET used = 1 WHERE id IN (SELECT id FROM pool WHERE used = 0 ORDER BY id LIMIT ?) "
    "RETURNING id, code, (SELECT max(id) FROM pool)"
)


def claim_rows(connection: sqlite3.Connection, count: int) -> list[tuple[int, int, int]]:
    # fetchall(): an unfinished RETURNING statement would keep the write lock held.
    return connection.execute(CLAIM, (count,)).fetchall()


@dataclass
class _Serving:
    """This process's writers (by shard, or by kind: any of its shards)."""

    guard: threading.Lock = field(default_factory=threading.Lock)
    writers: dict[str, GroupCommitter] = field(default_factory=dict)


class ShardedSqliteStore(Store, Prefilling):
    def __init__(self, settings: StoreSettings, *, shard_size: int, refill_at: int) -> None:
        super().__init__(settings)
        self.refill_at = refill_at
        self._files = ShardFiles(settings)
        self._serving = runtime.PerProcess(_Serving)
        # Per thread, and under gevent per greenlet: each refill keeps its own connections for its transactions.
        self._refill_connections = runtime.PerProcess(lambda: threading.local())
        # Stats read on the request's own OS thread: one connection per file and OS thread, not per request.
        self._stats_connections = runtime.PerProcess(runtime.os_thread_local)
        self.refiller = ShardRefiller(
            settings, self._files, self._write_job, partial(self._connection, self._refill_connections),
            shard_size=shard_size, refill_at=refill_at,
        )  # fmt: skip

    def issue(self, kind: NumberKind, count: int = 1) -> Issued:
        """`count` codes with the shard each came from, durably marked used, never returned before."""
        names = shard_names(kind)
        if count == 1:
            # The typical request: grouped with the others of its kind, in a shard drawn for the group.
            name, rows = self._writer(kind).submit_placed(partial(claim_rows, count=1), writes_once=True)
            if self._check_level(name, 1, rows):
                return Issued([rows[0][1]], [name])
            names = [other for other in names if other != name]
        claimed: list[tuple[str, int, int]] = []
        # Spreads the load, nothing more: the numbers are the pools' CSPRNG draws, whichever shard serves them.
        start = random.randrange(len(names))
        for name in names[start:] + names[:start]:
            claimed += [(name, row_id, code) for row_id, code in self._claim_from(name, count - len(claimed))]
            if len(claimed) == count:
                return Issued([code for _, _, code in claimed], [name for name, _, _ in claimed])
        self._release(claimed)
        self._raise_shortage(kind, count)
        raise AssertionError("unreachable")

    def prepare(self) -> None:
        self.refiller.top_up_at_start()

    def prefill(self, kind: NumberKind, count: int) -> None:
        self.refiller.prefill(kind, count)

    def fill_shards(self, target: int, progress: Callable[[str, int, int], None] | None = None) -> list[FillReport]:
        return self.refiller.fill_shards(target, progress)

    def check_ready(self) -> None:
        # Opening a shard checks it against its ledger and settings; the connections are kept for the next time.
        for kind in KINDS:
            for name in (*shard_names(kind), ledger_name(kind)):
                with self._files.translated_errors(name):
                    self._connection(self._stats_connections, name).execute("SELECT 1").fetchone()

    def stats(self) -> dict[str, dict]:
        return sharded_stats(self._files, self.spaces, partial(self._connection, self._stats_connections))

    def _claim_from(self, name: str, count: int) -> list[tuple[int, int]]:
        """Up to `count` (id, code) rows of shard `name`, durably marked used. Claims of this process's threads
        that arrive together are group-committed: one transaction and one fsync for all of them."""
        rows = self._writer(name).submit(lambda connection: claim_rows(connection, count), writes_once=True)
        return self._check_level(name, count, rows)

    def _check_level(self, name: str, count: int, rows: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
        """The (id, code) of claimed `rows`; schedules a refill of shard `name` if they leave it low."""
        rows = sorted(rows)
        if len(rows) < count or rows[0][2] - rows[-1][0] < self.refill_at:
            # Unused rows all lie above the claimed ids, so max(id) - last claimed id counts what is left.
            self.refiller.schedule(name)
        return [(row_id, code) for row_id, code, _ in rows]

    def _write_job(self, name: str, job: Callable[[sqlite3.Connection], T]) -> T:
        """A refill's job in shard `name`'s writer: in a savepoint, and waiting longer than a request, since
        numbers it was given up on would be lost."""
        return self._writer(name).submit(job, timeout=max(60.0, self.lock_timeout))

    def _writer(self, name: str) -> GroupCommitter:
        """The writer of shard `name`, or of kind `name` (its groups go to any shard of the kind). Every writer of
        every process takes its turn on a blocking flock of `<shard>.claim.lock`, which hands the shard over the
        moment it is free, so a refill never meets a claim in SQLite's sleeping busy handler."""
        serving = self._serving.get()
        writer = serving.writers.get(name)  # set once per process and name, under the guard
        if writer is not None:
            return writer
        with serving.guard:
            if name not in serving.writers:
                shards = shard_names(name) if name in KINDS else [name]
                label = f"{self.label} {name}"
                targets = [
                    SqliteTarget(shard, partial(self._files.open, shard), self.folder / f"{shard}.claim.lock", label)
                    for shard in shards
                ]
                serving.writers[name] = GroupCommitter(
                    targets, self.lock_timeout, lambda: StoreBusyError.of(self.label)
                )
            return serving.writers[name]

    def _release(self, claimed: list[tuple[str, int, int]]) -> None:
        """Puts back rows claimed for a batch that could not be completed; they were never answered."""
        for name in {name for name, _, _ in claimed}:
            ids = [row_id for shard, row_id, _ in claimed if shard == name]
            query = f"UPDATE pool SET used = 0 WHERE id IN ({','.join('?' * len(ids))})"
            try:
                self._writer(name).submit(lambda connection, query=query, ids=ids: connection.execute(query, ids))
            except (StoreBusyError, StoreUnavailableError, StoreCorruptError):
                # They stay marked used: lost, never served, which is the safe direction.
                event(log, "putback_failed", logging.WARNING, stage=self.label, shard=name, rows=len(ids))

    def _raise_shortage(self, kind: NumberKind, count: int) -> None:
        remaining = self._exact_remaining(kind)
        if remaining is not None and remaining < count:
            # Not remembered: rows claimed by a batch that another process cannot complete come back.
            self._raise_exhausted(count, remaining)
        for name in shard_names(kind):
            self.refiller.schedule(name)
        raise ShardsEmptyError(EMPTY_MESSAGE)

    @staticmethod
    def _raise_exhausted(count: int, remaining: int) -> None:
        if count == 1:
            raise SpaceExhaustedError(EXHAUSTED_MESSAGE)
        raise InsufficientRemainingError(count, remaining)

    def _exact_remaining(self, kind: NumberKind) -> int | None:
        """Numbers not yet served, or None while a refill of the kind runs (it may hold reserved numbers
        that are in no shard yet). Holding every refill lock of the kind keeps the counts still."""
        with self._files.refill_locks(shard_names(kind), wait=0.0) as held:
            if not held:
                return None
            connection = partial(self._connection, self._stats_connections)
            with self._files.translated_errors("ledger"):
                available = sum(count_available(connection(name)) for name in shard_names(kind))
                return self.spaces[kind].size - ledger_count(connection(ledger_name(kind))) + available

    def _connection(self, locals_: runtime.PerProcess, name: str) -> sqlite3.Connection:
        """A connection to file `name` of the stage's folder, kept in `locals_` (refills', or stats')."""
        connections = locals_.get().__dict__.setdefault("connections", {})
        if name not in connections:
            connections[name] = self._files.open(name)
        return connections[name]
