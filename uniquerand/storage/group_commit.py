"""Group commit for SQLite writers: the jobs that arrive together share one transaction and one fsync.

Each committer (one per database a process writes: /v3's, each /v4 shard's) has one writer thread, started
lazily after any fork. A job runs inside a savepoint of the shared `BEGIN IMMEDIATE` transaction (or, when
its only write is its last statement, needs none), so a job that fails undoes only its own writes, and
every job's result is handed back only after COMMIT returned: nothing is served before it is durable.
Writers of different processes queue on a blocking `flock` of a lock file beside the database: the kernel
wakes the next one the moment the lock is free, where SQLite's busy handler would sleep and poll.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Job = Callable[[sqlite3.Connection], Any]


class _Pending:
    __slots__ = ("abandoned", "done", "error", "job", "needs_savepoint", "posted", "value")

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
        self.error: BaseException | None = None


class GroupCommitter:
    def __init__(
        self,
        open_connection: Callable[[], sqlite3.Connection],
        lock_path: Path,
        translate: Callable[[BaseException], BaseException],
        wait_timeout: float,
        timeout_error: Callable[[], BaseException],
        max_jobs: int = 64,
    ) -> None:
        self._open_connection = open_connection
        self._lock_path = lock_path
        self._lock_fd: int | None = None
        self._translate = translate
        self._wait_timeout = wait_timeout
        self._timeout_error = timeout_error
        self._max_jobs = max_jobs
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._connection: sqlite3.Connection | None = None
        threading.Thread(target=self._run, name="sqlite-group-commit", daemon=True).start()

    def submit(self, job: Job, writes_once: bool = False, timeout: float | None = None) -> Any:
        """Runs `job(connection)` in the next shared transaction; returns its value once committed.

        `writes_once`: the job's only write is its last statement, so a job that fails has written nothing
        and needs no savepoint (two statements fewer on the hot path). `timeout`: seconds to wait before
        giving up with the timeout error (default: the committer's `wait_timeout`).
        """
        pending = _Pending(job, needs_savepoint=not writes_once)
        self._queue.put(pending)
        if not pending.done.acquire(timeout=self._wait_timeout if timeout is None else timeout):
            # Skipped if not started yet; if it already runs, its numbers are burned, never served twice.
            pending.abandoned = True
            raise self._timeout_error()
        if pending.error is not None:
            raise pending.error
        return pending.value

    def post(self, job: Job) -> None:
        """Queues `job` for the next shared transaction without waiting for it (housekeeping); its failure
        undoes its own writes and is logged."""
        self._queue.put(_Pending(job, needs_savepoint=True, posted=True))

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            try:
                lock_fd = self._lock_process()
                try:
                    # Jobs are gathered only once the lock is held: the ones that arrived while this writer
                    # waited for the other processes join this transaction instead of waiting for the next
                    # one. Larger groups mean fewer commits, and a batch's random keys share more B-tree pages.
                    self._gather(batch)
                    batch = [pending for pending in batch if not pending.abandoned]
                    if batch:
                        self._commit(batch)
                finally:
                    fcntl.flock(lock_fd, fcntl.LOCK_UN)
            except BaseException as err:  # the writer thread must survive anything
                fields = {"writer": self._lock_path.name}
                log.exception("group_commit_failed", extra={"event": "group_commit_failed", "fields": fields})
                self._abandon_transaction()
                for pending in batch:
                    pending.error = pending.error or self._translate(err)
            for pending in batch:
                pending.done.release()  # once: a job is taken from the queue into exactly one batch
                if pending.posted and pending.error is not None:
                    self._log_posted_failure(pending.error)

    def _log_posted_failure(self, error: BaseException) -> None:
        """Nobody waits for a posted job: its failure goes to the log, with the SQLite error or traceback."""
        detail = getattr(error, "detail", None)
        exc_info = None if detail else (type(error), error, error.__traceback__)
        fields = {"writer": self._lock_path.name, "error": str(error), **({"detail": detail} if detail else {})}
        log.warning("posted_job_failed", exc_info=exc_info, extra={"event": "posted_job_failed", "fields": fields})

    def _gather(self, batch: list[_Pending]) -> None:
        while len(batch) < self._max_jobs:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                return

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            if self._connection is None:
                self._connection = self._open_connection()
            connection = self._connection
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

    def _lock_process(self) -> int:
        """Takes the cross-process writer lock, held from BEGIN to COMMIT; returns its descriptor, for the
        caller to unlock (a plain call, not a @contextmanager generator: this runs once per transaction)."""
        if self._lock_fd is None:
            self._lock_path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        return self._lock_fd

    def _abandon_transaction(self) -> None:
        try:
            if self._connection is not None and self._connection.in_transaction:
                self._connection.execute("ROLLBACK")
        except sqlite3.Error:
            self._connection.close()
            self._connection = None

    def _fail(self, batch: list[_Pending], err: BaseException) -> None:
        error = self._translate(err)
        for pending in batch:
            pending.value, pending.error = None, pending.error or error
