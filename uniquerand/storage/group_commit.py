"""Group commit for SQLite writers: the jobs that arrive together share one transaction and one fsync.

Each committer has one writer, started lazily after any fork, and writes one database per group: /v3's
committer its database, a /v4 shard's its shard, a /v4 kind's a shard of the kind drawn for each group. A job
runs inside a savepoint of the shared `BEGIN IMMEDIATE` transaction (or, when its only write is its last
statement, needs none), so a job that fails undoes only its own writes, and every job's result is handed
back only after COMMIT returned: nothing is served before it is durable. Writers of different processes
queue on a blocking `flock` of a lock file beside each database: the kernel wakes the next one the moment
the lock is free, where SQLite's busy handler would sleep and poll.
The writer is a thread; under gevent's worker a greenlet, which runs the wait for that lock and the transaction
on a real thread (see `native`), so that the worker serves other requests meanwhile.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import random
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from uniquerand.storage import native

log = logging.getLogger(__name__)

Job = Callable[[sqlite3.Connection], Any]


class Database:
    """A database a committer writes: how to open it, and the lock file its writers of every process take turns on."""

    def __init__(self, name: str, open_connection: Callable[[], sqlite3.Connection], lock_path: Path) -> None:
        self.name = name
        self.open_connection = open_connection
        self.lock_path = lock_path
        self.connection: sqlite3.Connection | None = None
        self.lock_fd: int | None = None


class _Pending:
    __slots__ = ("abandoned", "database", "done", "error", "job", "needs_savepoint", "posted", "value")

    def __init__(self, job: Job, needs_savepoint: bool, posted: bool = False) -> None:
        self.job = job
        self.needs_savepoint = needs_savepoint
        self.posted = posted
        self.abandoned = False
        # Held until the job's transaction ended: the cheapest wake-up CPython has (one futex, where an Event
        # takes a Condition and a second lock per wait).
        self.done = threading.Lock()
        self.done.acquire()
        self.value: Any = None
        self.database = ""
        self.error: BaseException | None = None


class GroupCommitter:
    def __init__(
        self,
        databases: list[Database],
        translate: Callable[[BaseException], BaseException],
        wait_timeout: float,
        timeout_error: Callable[[], BaseException],
        max_jobs: int = 64,
    ) -> None:
        self._databases = databases
        self._name = "+".join(database.lock_path.name for database in databases)
        self._translate = translate
        self._wait_timeout = wait_timeout
        self._timeout_error = timeout_error
        self._max_jobs = max_jobs
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="sqlite-group-commit", daemon=True).start()

    def submit(self, job: Job, writes_once: bool = False, timeout: float | None = None) -> Any:
        """Runs `job(connection)` in the next shared transaction; returns its value once committed. A group goes
        to one database, drawn at random when the committer has several (see `submit_placed`).

        `writes_once`: the job's only write is its last statement, so a job that fails has written nothing
        and needs no savepoint (two statements fewer on the hot path). `timeout`: seconds to wait before
        giving up with the timeout error (default: the committer's `wait_timeout`).
        """
        return self.submit_placed(job, writes_once, timeout)[1]

    def submit_placed(self, job: Job, writes_once: bool = False, timeout: float | None = None) -> tuple[str, Any]:
        """`submit`, returning the name of the database the job ran in with its value."""
        pending = _Pending(job, needs_savepoint=not writes_once)
        self._queue.put(pending)
        if not pending.done.acquire(timeout=self._wait_timeout if timeout is None else timeout):
            # Skipped if not started yet; if it already runs, its numbers are burned, never served twice.
            pending.abandoned = True
            raise self._timeout_error()
        if pending.error is not None:
            raise pending.error
        return pending.database, pending.value

    def post(self, job: Job) -> None:
        """Queues `job` for the next shared transaction without waiting for it (housekeeping); its failure
        undoes its own writes and is logged."""
        self._queue.put(_Pending(job, needs_savepoint=True, posted=True))

    def _run(self) -> None:
        commit = self._commit_offloaded if native.gevent_patched() else self._commit_locked
        while True:
            batch = [self._queue.get()]
            try:
                batch = commit(batch)
            except BaseException as err:  # the writer must survive anything
                fields = {"writer": self._name}
                log.exception("group_commit_failed", extra={"event": "group_commit_failed", "fields": fields})
                self._abandon_transactions()
                for pending in batch:
                    pending.error = pending.error or self._translate(err)
            for pending in batch:
                pending.done.release()  # once: a job is taken from the queue into exactly one batch
                if pending.posted and pending.error is not None:
                    self._log_posted_failure(pending.error)

    def _commit_locked(self, batch: list[_Pending], gather: bool = True) -> list[_Pending]:
        database = self._pick()
        lock_fd = self._lock_process(database)
        try:
            if gather:
                # Jobs are gathered only once the lock is held: the ones that arrived while this writer waited
                # for the other processes join this transaction instead of waiting for the next one. Larger
                # groups mean fewer commits, and a batch's random keys share more B-tree pages.
                self._gather(batch)
            return self._commit_live(database, batch)
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)

    def _commit_offloaded(self, batch: list[_Pending]) -> list[_Pending]:
        """`_commit_locked` for gevent's worker: the lock wait and the transaction (with its fsync) run on a
        real thread, in one hand-off. The jobs are gathered before it, in this greenlet (gevent's queue is the
        event loop's): gathering once the lock is held takes a second hand-off whenever another process holds
        it, and measured slower (/v3 0.55-0.56 of /healthz against 0.61-0.62 in the same minutes)."""
        self._gather(batch)
        return native.run(self._commit_locked, batch, False)

    def _pick(self) -> Database:
        return self._databases[0] if len(self._databases) == 1 else random.choice(self._databases)

    def _commit_live(self, database: Database, batch: list[_Pending]) -> list[_Pending]:
        """Commits the jobs of `batch` whose callers still wait; returns them."""
        batch = [pending for pending in batch if not pending.abandoned]
        if batch:
            self._commit(database, batch)
        return batch

    def _log_posted_failure(self, error: BaseException) -> None:
        """Nobody waits for a posted job: its failure goes to the log, with the SQLite error or traceback."""
        detail = getattr(error, "detail", None)
        exc_info = None if detail else (type(error), error, error.__traceback__)
        fields = {"writer": self._name, "error": str(error), **({"detail": detail} if detail else {})}
        log.warning("posted_job_failed", exc_info=exc_info, extra={"event": "posted_job_failed", "fields": fields})

    def _gather(self, batch: list[_Pending]) -> None:
        while len(batch) < self._max_jobs:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                return

    def _commit(self, database: Database, batch: list[_Pending]) -> None:
        for pending in batch:
            pending.database = database.name
        try:
            if database.connection is None:
                database.connection = database.open_connection()
            connection = database.connection
            connection.execute("BEGIN IMMEDIATE")
        except (sqlite3.Error, OSError) as err:
            self._fail(batch, err)
            return
        for pending in batch:
            self._run_job(connection, pending)
        try:
            connection.execute("COMMIT")
        except (sqlite3.Error, OSError) as err:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            self._fail(batch, err)

    def _run_job(self, connection: sqlite3.Connection, pending: _Pending) -> None:
        if pending.needs_savepoint:
            connection.execute("SAVEPOINT job")
        try:
            pending.value = pending.job(connection)
        except Exception as err:
            if pending.needs_savepoint:
                connection.execute("ROLLBACK TO job")
            pending.error = self._translate(err) if isinstance(err, sqlite3.Error | OSError) else err
        if pending.needs_savepoint:
            connection.execute("RELEASE job")

    @staticmethod
    def _lock_process(database: Database) -> int:
        """Takes the database's cross-process writer lock, held from BEGIN to COMMIT; returns its descriptor,
        for the caller to unlock (a plain call, not a @contextmanager generator: this runs once per transaction)."""
        if database.lock_fd is None:
            database.lock_path.parent.mkdir(parents=True, exist_ok=True)
            database.lock_fd = os.open(database.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(database.lock_fd, fcntl.LOCK_EX)
        return database.lock_fd

    def _abandon_transactions(self) -> None:
        for database in self._databases:
            try:
                if database.connection is not None and database.connection.in_transaction:
                    database.connection.execute("ROLLBACK")
            except sqlite3.Error:
                database.connection.close()
                database.connection = None

    def _fail(self, batch: list[_Pending], err: BaseException) -> None:
        error = self._translate(err)
        for pending in batch:
            pending.value, pending.error = None, pending.error or error
