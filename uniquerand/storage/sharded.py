"""ShardedSqliteStore: the design's fourth stage. Per type, two SQLite pools ("shards") of pre-drawn numbers,
refilled in the background from a ledger database of every number ever put into a pool.

Concurrency: a claim is one `UPDATE ... RETURNING` statement, atomic across every process by SQLite's write
lock; the claims of a process that arrive together share one transaction and one fsync (group commit, see
`group_commit`), and writers of every process take turns on a blocking flock of the shard. Single numbers,
the typical request, are grouped per kind: each group goes to a shard drawn at random, so each request is
still served by a random shard, with the commits of one writer instead of two. A refill reserves
numbers in the ledger first (INSERT OR IGNORE under BEGIN IMMEDIATE: only new rows count) and only then adds
them to its shard (a job of the shard's writer, like a claim), so no number is ever in two shards; a per-shard
flock lets one process at a time refill.
Durability: WAL with synchronous=FULL: a claim is on disk before it is returned. A crash can lose numbers
(reserved but not yet in a shard, or claimed but not yet answered): gaps, never a number served twice.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

from uniquerand.logs import event
from uniquerand.numbers import KINDS, NumberKind, NumberSpace
from uniquerand.storage import native
from uniquerand.storage.base import (
    InsufficientRemainingError,
    ShardsEmptyError,
    SpaceExhaustedError,
    StoreBusyError,
    StoreCorruptError,
    StoreUnavailableError,
)
from uniquerand.storage.group_commit import Database, GroupCommitter
from uniquerand.storage.shard_files import (
    ShardFiles,
    count_available,
    kind_of,
    ledger_count,
    ledger_name,
    shard_names,
)
from uniquerand.storage.shard_refill import REFILL_CHUNK, add_to_shard, record_refill, reserve
from uniquerand.storage.sqlite_common import store_error

log = logging.getLogger(__name__)
T = TypeVar("T")

# Seconds before a failed refill of a shard may be scheduled again (so a broken disk is not hammered).
REFILL_RETRY_DELAY = 1.0
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
class _ProcessState:
    """What must never cross a fork: connections, locks, the refill pool and its bookkeeping."""

    pid: int = field(default_factory=os.getpid)
    guard: threading.Lock = field(default_factory=threading.Lock)
    writers: dict[str, GroupCommitter] = field(default_factory=dict)  # by shard, or by kind (any of its shards)
    # Per thread, and under gevent per greenlet: each refill keeps its own connections for its transactions.
    local: threading.local = field(default_factory=threading.local)
    executor: ThreadPoolExecutor | None = None
    refills: dict[str, Future] = field(default_factory=dict)
    failed_at: dict[str, float] = field(default_factory=dict)
    rerun: set[str] = field(default_factory=set)
    exhausted: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class FillReport:
    shard: str
    added: int
    available: int


class ShardedSqliteStore:
    def __init__(
        self,
        folder: str | os.PathLike[str],
        spaces: dict[NumberKind, NumberSpace],
        *,
        label: str,
        max_attempts: int,
        lock_timeout: float,
        shard_size: int,
        refill_at: int,
    ) -> None:
        self.folder = Path(folder)
        self.spaces = spaces
        self.label = label
        self.max_attempts = max_attempts
        self.lock_timeout = lock_timeout
        self.shard_size = shard_size
        self.refill_at = refill_at
        self._files = ShardFiles(self.folder, spaces, label=label, lock_timeout=lock_timeout)
        self._state_guard = threading.Lock()
        self._process: _ProcessState | None = None

    # -- serving --------------------------------------------------------------------------------------------

    def issue(self, kind: NumberKind, count: int = 1) -> list[int]:
        return [code for code, _ in self.claim(kind, count)]

    def claim(self, kind: NumberKind, count: int = 1) -> list[tuple[int, str]]:
        """`count` codes with the shard each came from, durably marked used, never returned before."""
        state = self._state()
        if kind in state.exhausted:
            self._raise_exhausted(count, 0)
        names = shard_names(kind)
        claimed: list[tuple[str, int, int]] = []
        if count == 1:
            # The typical request: grouped with the others of its kind, in a shard drawn for the group.
            name, rows = self._writer(kind).submit_placed(partial(claim_rows, count=1), writes_once=True)
            claimed = [(name, row_id, code) for row_id, code in self._check_level(name, 1, rows)]
            if claimed:
                return [(code, name) for name, _, code in claimed]
            names = [other for other in names if other != name]
        # Spreads the load, nothing more: the numbers are the pools' CSPRNG draws, whichever shard serves them.
        # (`secrets.randbelow` read the OS twice per request on average for two shards.)
        start = random.randrange(len(names))
        for name in names[start:] + names[:start]:
            claimed += [(name, row_id, code) for row_id, code in self._claim_from(name, count - len(claimed))]
            if len(claimed) == count:
                return [(code, name) for name, _, code in claimed]
        self._release(claimed)
        self._raise_shortage(kind, count)
        raise AssertionError("unreachable")

    def _claim_from(self, name: str, count: int) -> list[tuple[int, int]]:
        """Up to `count` (id, code) rows of shard `name`, durably marked used. Claims of this process's threads
        that arrive together are group-committed: one transaction and one fsync for all of them."""
        return self._check_level(name, count, self._write(name, lambda connection: claim_rows(connection, count)))

    def _check_level(self, name: str, count: int, rows: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
        """The (id, code) of claimed `rows`; schedules a refill of shard `name` if they leave it low."""
        rows = sorted(rows)
        if len(rows) < count or rows[0][2] - rows[-1][0] < self.refill_at:
            # Unused rows all lie above the claimed ids, so max(id) - last claimed id counts what is left.
            self._schedule_refill(name)
        return [(row_id, code) for row_id, code, _ in rows]

    def _write(self, name: str, job: Callable[[sqlite3.Connection], T], statement: bool = True) -> T:
        """Runs `job` in the next transaction of shard `name`'s writer and returns its result once committed.
        Batch claims, refills and put-backs go through it, single claims through the writer of their kind (see
        `claim`): every writer of every process takes its turn on a blocking flock of `<shard>.claim.lock`,
        which hands the shard over the moment it is free, so a refill never meets a claim in SQLite's sleeping
        busy handler. A request waits LOCK_TIMEOUT at most; a job of several statements (`statement=False`: a
        refill's) gets a savepoint, and waits longer, since numbers it was given up on would be lost."""
        if statement:
            return self._writer(name).submit(job, writes_once=True)
        return self._writer(name).submit(job, timeout=max(60.0, self.lock_timeout))

    def _writer(self, name: str) -> GroupCommitter:
        """The writer of shard `name`, or of kind `name` (its groups go to any shard of the kind)."""
        state = self._state()
        writer = state.writers.get(name)  # set once per process and name, under the guard
        if writer is not None:
            return writer
        with state.guard:
            if name not in state.writers:
                shards = shard_names(name) if name in KINDS else [name]
                state.writers[name] = GroupCommitter(
                    [
                        Database(shard, partial(self._files.open, shard), self.folder / f"{shard}.claim.lock")
                        for shard in shards
                    ],
                    lambda err: store_error(err, f"{self.label} {name}"),
                    wait_timeout=self.lock_timeout,
                    timeout_error=lambda: StoreBusyError(f"The {self.label} store is busy; retry shortly."),
                )
            return state.writers[name]

    def _release(self, claimed: list[tuple[str, int, int]]) -> None:
        """Puts back rows claimed for a batch that could not be completed; they were never answered."""
        for name in {name for name, _, _ in claimed}:
            ids = [row_id for shard, row_id, _ in claimed if shard == name]
            query = f"UPDATE pool SET used = 0 WHERE id IN ({','.join('?' * len(ids))})"
            try:
                self._write(name, lambda connection, query=query, ids=ids: connection.execute(query, ids))
            except (StoreBusyError, StoreUnavailableError, StoreCorruptError):
                # They stay marked used: lost, never served, which is the safe direction.
                log.warning("could not put back %d claimed rows of %s", len(ids), name, exc_info=True)

    def _raise_shortage(self, kind: NumberKind, count: int) -> None:
        remaining = self._exact_remaining(kind)
        if remaining is not None and remaining < count:
            if remaining == 0:
                self._state().exhausted.add(kind)
            self._raise_exhausted(count, remaining)
        for name in shard_names(kind):
            self._schedule_refill(name)
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
            with self._files.translated_errors("ledger"):
                available = sum(count_available(self._connection(name)) for name in shard_names(kind))
                return self.spaces[kind].size - self._ledger_count(kind) + available

    # -- refilling ------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """At a worker's start, before it serves (gunicorn.conf.py's post_worker_init): tops up every shard
        below the refill mark, so that a fresh server's first requests find numbers instead of the "being
        refilled" 503. A server's workers start together: one refills each shard while the others wait for
        its refill lock, then find the shard full. A lock held past LOCK_TIMEOUT leaves the shard to the
        background refill."""
        for kind in KINDS:
            for name in shard_names(kind):
                with self._files.translated_errors(name):
                    if count_available(self._connection(name)) >= self.refill_at:
                        continue
                if self.refill(name, self.shard_size, wait=self.lock_timeout) is None:
                    self._schedule_refill(name)


    def _schedule_refill(self, name: str) -> None:
        state = self._state()
        with state.guard:
            if name in state.refills:
                # The running refill may already have counted; it runs once more when it ends.
                state.rerun.add(name)
                return
            if time.monotonic() - state.failed_at.get(name, -REFILL_RETRY_DELAY) < REFILL_RETRY_DELAY:
                return
            if state.executor is None:
                state.executor = ThreadPoolExecutor(2, thread_name_prefix=f"{self.label}-refill")
            try:
                state.refills[name] = state.executor.submit(self._refill_in_background, name)
            except RuntimeError:
                log.warning("refill of %s not scheduled: the interpreter is shutting down", name)

    def _refill_in_background(self, name: str) -> None:
        state = self._state()
        while True:
            with state.guard:
                state.rerun.discard(name)
            failed = False
            try:
                # A short wait: a claim that checks for exhaustion holds the refill locks for milliseconds.
                self.refill(name, self.shard_size, wait=0.5)
            except Exception:
                failed = True
                # Logged and retried by a later claim that finds the shard low or empty.
                state.failed_at[name] = time.monotonic()
                log.exception(
                    "refill_failed", extra={"event": "refill_failed", "fields": {"stage": self.label, "shard": name}}
                )
            with state.guard:
                if failed or name not in state.rerun:
                    state.refills.pop(name, None)
                    return

    def refill(
        self,
        name: str,
        target: int,
        wait: float = 0.0,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> FillReport | None:
        """Tops shard `name` up to `target` unused numbers, ledger first. None if another refill of the
        shard holds its lock past `wait` seconds."""
        kind = kind_of(name)
        with self._files.refill_locks([name], wait) as held:
            if not held:
                return None
            started, added = time.monotonic(), 0
            with self._files.translated_errors(name):
                connection = self._connection(name)
                available = count_available(connection)
                if available < target:
                    event(log, "refill_started", stage=self.label, shard=name, available=available, target=target)
                while available < target:
                    codes = self._reserve(kind, min(REFILL_CHUNK, target - available))
                    if not codes:
                        break
                    self._write(name, lambda connection, c=codes: add_to_shard(connection, c, used=0), statement=False)
                    available += len(codes)
                    added += len(codes)
                    if progress:
                        progress(name, available, target)
                    if available >= target:
                        # Claims that ran meanwhile found this refill running and did not schedule another.
                        available = count_available(connection)
                if added:
                    seconds = time.monotonic() - started
                    self._write(name, lambda connection: record_refill(connection, added, seconds), statement=False)
                    event(
                        log, "refill_finished", stage=self.label, shard=name, added=added, available=available,
                        seconds=round(seconds, 3),
                    )  # fmt: skip
            return FillReport(name, added, available)

    def fill_shards(self, target: int, progress: Callable[[str, int, int], None] | None = None) -> list[FillReport]:
        """`flask init-shards`: every shard topped up to `target`, waiting for running refills."""
        reports = []
        for kind in KINDS:
            for name in shard_names(kind):
                report = self.refill(name, target, wait=max(60.0, self.lock_timeout), progress=progress)
                if report is None:
                    raise StoreBusyError(f"Another process keeps refilling {name}; try again later.")
                reports.append(report)
        return reports

    def prefill(self, kind: NumberKind, count: int) -> None:
        """Records `count` numbers as issued (ledger, then used rows of the first shard), then tops up."""
        name = shard_names(kind)[0]
        with self._files.refill_locks([name], wait=max(60.0, self.lock_timeout)) as held:
            if not held:
                raise StoreBusyError(f"Another process keeps refilling {name}; try again later.")
            with self._files.translated_errors(name):
                done = 0
                while done < count:
                    codes = self._reserve(kind, min(REFILL_CHUNK * 5, count - done))
                    if not codes:
                        raise InsufficientRemainingError(count, done)
                    self._write(name, lambda connection, c=codes: add_to_shard(connection, c, used=1), statement=False)
                    done += len(codes)
        for name in shard_names(kind):
            self.refill(name, self.shard_size, wait=max(60.0, self.lock_timeout))

    def _reserve(self, kind: NumberKind, wanted: int) -> list[int]:
        # A transaction of many draws, which may wait for another process's refill: off gevent's loop.
        connection = self._connection(ledger_name(kind))
        return native.run(reserve, connection, self.spaces[kind], wanted, self.max_attempts)

    # -- stats ----------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, dict]:
        result: dict[str, dict] = {}
        for kind in KINDS:
            shards = {name: self._shard_stats(name) for name in shard_names(kind)}
            with self._files.translated_errors("ledger"):
                ledger = self._ledger_count(kind)
            served = sum(shard["served"] for shard in shards.values())
            available = sum(shard["available"] for shard in shards.values())
            size = self.spaces[kind].size
            result[kind] = {
                "issued": served,
                "space_size": size,
                "remaining": size - ledger + available,
                "ledger": ledger,
                "shards": shards,
            }
        return result

    def _shard_stats(self, name: str) -> dict:
        with self._files.translated_errors(name):
            connection = self._connection(name)
            available = count_available(connection)
            rows = connection.execute("SELECT max(id) FROM pool").fetchone()[0] or 0
            meta = dict(connection.execute("SELECT key, value FROM meta"))
        with self._files.refill_locks([name], wait=0.0) as free:
            refilling = not free
        return {
            "available": available,
            # Rows are never deleted, so ids run 1..max(id): used rows are the rest, minus retired ones.
            "served": rows - available - meta.get("retired", 0),
            "refilling": refilling,
            "last_refill": {
                "at": meta.get("last_refill_at"),
                "added": meta.get("last_refill_added"),
                "seconds": meta.get("last_refill_seconds"),
            },
        }

    # -- files and connections ------------------------------------------------------------------------------

    def _ledger_count(self, kind: NumberKind) -> int:
        return ledger_count(self._connection(ledger_name(kind)))

    def _state(self) -> _ProcessState:
        process = self._process
        if process is None or process.pid != os.getpid():
            with self._state_guard:
                if self._process is None or self._process.pid != os.getpid():
                    self._process = _ProcessState()
                process = self._process
        return process

    def _connection(self, name: str) -> sqlite3.Connection:
        """This thread's (under gevent: greenlet's) connection to file `name` of the stage's folder (refills, stats)."""
        local = self._state().local
        connections = local.__dict__.setdefault("connections", {})
        if name not in connections:
            connections[name] = self._files.open(name)
        return connections[name]
