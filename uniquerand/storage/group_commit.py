"""Group commit: the writes of a process that arrive together share one transaction and one durable write.

Every store that records what it issues writes through a `GroupCommitter`: the JSON file (one read and one
atomic rewrite per group), /v3's database, /v4's shards. A committer has one writer, started on first use in
the process that uses it, and a `Target` per file or database it may write (a group goes to one of them,
drawn at random). A job runs inside a savepoint of the group's transaction (or, when its only write is its
last statement, needs none), so a job that fails undoes only its own writes; every job's value is handed
back only after the commit returned: nothing is served before it is durable. Jobs submitted with
`submit_batched` and the same batch function run as one call per group (a signed draw's serials: one
statement for the group). A caller waits `wait_timeout` at most; a job it gave up on is skipped if it has
not started, and if it has, its codes are burned (written, never served).

`Target` is the small transaction protocol a backend implements: `begin` takes the target's cross-process
lock and starts a transaction, `commit` makes it durable, `abort` drops it; both release the lock. A target
whose single statements are durable transactions of their own (a PostgreSQL connection in autocommit) may
also offer `begin_alone` and `end_alone`: a group that is one statement (jobs submitted with `one_statement`:
one job, or one batch function's items) then runs without BEGIN and COMMIT, one round trip instead of three.
With `offload`, the lock wait and the transaction run on a real OS thread under gevent (`runtime`), so that
the worker serves other requests meanwhile; without it they run on the writer itself (the JSON file's
lock polls with a sleep, which gevent makes cooperative). With `inline_when_free` as well, only the waits go
to an OS thread: a target that can `try_begin` (begin only if its lock is free at once) runs the group on the
writer, blocking the worker for the transaction and its durable write. For a small transaction that costs
less CPU than handing the group to a thread and back (the two threads contend for the GIL meanwhile).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from uniquerand.storage import runtime
from uniquerand.storage.contract import StoreError

log = logging.getLogger(__name__)

Job = Callable[[Any], Any]


class Target(Protocol):
    """A file or database a committer writes, and how a transaction on it goes."""

    name: str
    # The exceptions of the backend (sqlite3.Error, OSError) that `translate` turns into store errors.
    faults: tuple[type[BaseException], ...]

    def begin(self) -> Any:
        """Takes the cross-process lock, then starts a transaction; returns what jobs get (a connection, a
        document). Raises a StoreError with the lock released if either fails."""

    def savepoint(self, handle: Any) -> None: ...

    def rollback_to_savepoint(self, handle: Any) -> None: ...

    def release_savepoint(self, handle: Any) -> None: ...

    def commit(self, handle: Any) -> None:
        """Makes the transaction durable; a StoreError if it may not be (then rolled back). Releases the lock
        either way."""

    def abort(self, handle: Any | None) -> None:
        """Drops the transaction (if `handle`) and releases the lock; never raises."""

    def translate(self, err: BaseException) -> StoreError:
        """The store error for a fault: a backend's by its class, anything else as the store being unusable."""


# Runs the items of one group's jobs that share it as one job (`submit_batched`): a list of values, one per item.
BatchJob = Callable[[Any, list[Any]], list[Any]]


class _Pending:
    __slots__ = (
        "abandoned",
        "batch",
        "done",
        "error",
        "item",
        "job",
        "needs_savepoint",
        "one_statement",
        "posted",
        "target",
        "value",
    )

    def __init__(
        self,
        job: Job | None,
        needs_savepoint: bool,
        posted: bool = False,
        batch: BatchJob | None = None,
        item=None,
        one_statement: bool = False,
    ) -> None:
        self.job = job
        self.batch = batch
        self.item = item
        self.needs_savepoint = needs_savepoint
        self.one_statement = one_statement
        self.posted = posted
        self.abandoned = False
        # Held until the job's transaction ended: the cheapest wake-up CPython has (one futex, where an Event
        # takes a Condition and a second lock per wait).
        self.done = threading.Lock()
        self.done.acquire()
        self.value: Any = None
        self.target = ""
        self.error: BaseException | None = None


class GroupCommitter:
    def __init__(
        self,
        targets: list[Target],
        wait_timeout: float,
        timeout_error: Callable[[], BaseException],
        *,
        offload: bool = True,
        inline_when_free: bool = False,
        max_jobs: int = 64,
    ) -> None:
        self._targets = targets
        self._name = "+".join(target.name for target in targets)
        self._wait_timeout = wait_timeout
        self._timeout_error = timeout_error
        self._offload = offload and runtime.gevent_patched()
        self._inline_when_free = self._offload and inline_when_free
        self._max_jobs = max_jobs
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        threading.Thread(target=self._run, name=f"group-commit {self._name}", daemon=True).start()

    def submit(self, job: Job, writes_once: bool = False, timeout: float | None = None) -> Any:
        """Runs `job(handle)` in the next shared transaction; returns its value once committed.

        `writes_once`: the job's only write is its last statement, so a job that fails has written nothing
        and needs no savepoint (two statements fewer on the hot path). `timeout`: seconds to wait before
        giving up with the timeout error (default: the committer's `wait_timeout`).
        """
        return self.submit_placed(job, writes_once, timeout)[1]

    def submit_placed(self, job: Job, writes_once: bool = False, timeout: float | None = None) -> tuple[str, Any]:
        """`submit`, returning the name of the target the job ran in with its value."""
        return self._wait(_Pending(job, needs_savepoint=not writes_once), timeout)

    def submit_batched(
        self, batch: BatchJob, item: Any, timeout: float | None = None, one_statement: bool = False
    ) -> Any:
        """Like `submit`, for jobs whose writes are cheaper together: the items submitted with the same `batch`
        that land in one group run as one call `batch(handle, items)` (in one savepoint: they fail together),
        which returns one value per item. On a server, one statement for a group instead of one per request.
        `one_statement`: the call runs one statement, which fails whole or not at all (no savepoint), and which
        may be a transaction of its own (`begin_alone`)."""
        pending = _Pending(None, needs_savepoint=not one_statement, batch=batch, item=item, one_statement=one_statement)
        return self._wait(pending, timeout)[1]

    def _wait(self, pending: _Pending, timeout: float | None) -> tuple[str, Any]:
        self._queue.put(pending)
        if not pending.done.acquire(timeout=self._wait_timeout if timeout is None else timeout):
            # Skipped if not started yet; if it already runs, its codes are burned, never served twice.
            pending.abandoned = True
            raise self._timeout_error()
        if pending.error is not None:
            raise pending.error
        return pending.target, pending.value

    def post(self, job: Job) -> None:
        """Queues `job` for the next shared transaction without waiting for it (housekeeping); its failure
        undoes its own writes and is logged."""
        self._queue.put(_Pending(job, needs_savepoint=True, posted=True))

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            try:
                if self._inline_when_free:
                    target = self._pick()
                    batch = self._commit_group(batch, True, target, partial(self._begin_on_loop, target))
                elif self._offload:
                    # Gathered before the hand-off, on the loop (gevent's queue is the loop's): gathering once the
                    # lock is held would take a second hand-off whenever another process holds it.
                    self._gather(batch)
                    batch = runtime.run_blocking(self._commit_group, batch, False)
                else:
                    batch = self._commit_group(batch, True)
            except BaseException as err:  # the writer must survive anything
                fields = {"writer": self._name}
                log.exception("group_commit_failed", extra={"event": "group_commit_failed", "fields": fields})
                self._fail(batch, self._targets[0].translate(err))
            for pending in batch:
                pending.done.release()  # once: a job is taken from the queue into exactly one batch
                if pending.posted and pending.error is not None:
                    self._log_posted_failure(pending.error)

    @staticmethod
    def _begin_on_loop(target: Target) -> Any:
        """The transaction of a group that runs on the writer (`inline_when_free`): begun at once if the target's
        lock is free, else awaited on an OS thread."""
        handle = target.try_begin()
        return runtime.run_blocking(target.begin) if handle is None else handle

    def _pick(self) -> Target:
        return self._targets[0] if len(self._targets) == 1 else random.choice(self._targets)

    def _commit_group(
        self, batch: list[_Pending], gather: bool, target: Target | None = None, begin: Callable[[], Any] | None = None
    ) -> list[_Pending]:
        """Runs and commits the jobs of `batch` (plus, with `gather`, those that arrived while the lock was
        awaited) whose callers still wait, in `target` (else one drawn), in the transaction `begin()` starts
        (else the target's own); returns them."""
        target = target or self._pick()
        alone = begin is None and hasattr(target, "begin_alone")
        if alone:
            if gather:  # a target without a lock to wait for: the group is known before it begins
                self._gather(batch)
                gather = False
            alone = _one_statement(batch)
        try:
            handle = (begin or (target.begin_alone if alone else target.begin))()
        except StoreError as err:
            if gather:
                # The jobs queued while it failed would wait for a next attempt that fails the same way.
                self._gather(batch)
            return self._fail(batch, err)
        end = target.end_alone if alone else target.abort
        try:
            if gather:
                # The jobs that arrived while this writer waited for other processes join this transaction:
                # larger groups mean fewer commits.
                self._gather(batch)
            batch = [pending for pending in batch if not pending.abandoned]
            batched: dict[BatchJob, list[_Pending]] = {}
            for pending in batch:
                pending.target = target.name
                if pending.batch is None:
                    self._run_job(target, handle, pending)
                else:
                    batched.setdefault(pending.batch, []).append(pending)
            for job, pendings in batched.items():
                self._run_batch(target, handle, job, pendings)
        except Exception as err:  # a savepoint that failed (a full disk), or a fault in this module
            end(handle)
            return self._fail(batch, target.translate(err))
        except BaseException:
            end(handle)
            raise
        if alone:
            # The statement was its own transaction: committed (durable) when it returned, or it raised.
            end(handle)
            return batch
        try:
            target.commit(handle)
        except StoreError as err:
            return self._fail(batch, err)
        return batch

    def _run_job(self, target: Target, handle: Any, pending: _Pending) -> None:
        if pending.needs_savepoint:
            target.savepoint(handle)
        try:
            pending.value = pending.job(handle)
        except Exception as err:
            if pending.needs_savepoint:
                target.rollback_to_savepoint(handle)
            # A backend's fault becomes a store error; a job's own error (a StoreError, or a bug: a 500 that
            # logs it) reaches its caller as it is.
            pending.error = target.translate(err) if isinstance(err, target.faults) else err
        if pending.needs_savepoint:
            target.release_savepoint(handle)

    def _run_batch(self, target: Target, handle: Any, job: BatchJob, pendings: list[_Pending]) -> None:
        items = [pending.item for pending in pendings]
        # Submitted with the same function, the items agree on whether it writes once.
        whole = _Pending(lambda h: job(h, items), needs_savepoint=pendings[0].needs_savepoint)
        self._run_job(target, handle, whole)
        for index, pending in enumerate(pendings):
            pending.error = whole.error
            pending.value = None if whole.error is not None else whole.value[index]

    def _gather(self, batch: list[_Pending]) -> None:
        while len(batch) < self._max_jobs:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                return

    @staticmethod
    def _fail(batch: list[_Pending], error: StoreError) -> list[_Pending]:
        for pending in batch:
            pending.value, pending.error = None, pending.error or error
        return batch

    def _log_posted_failure(self, error: BaseException) -> None:
        """Nobody waits for a posted job: its failure goes to the log, with the backend's error or traceback."""
        detail = getattr(error, "detail", None)
        exc_info = None if detail else (type(error), error, error.__traceback__)
        fields = {"writer": self._name, "error": str(error), **({"detail": detail} if detail else {})}
        log.warning("posted_job_failed", exc_info=exc_info, extra={"event": "posted_job_failed", "fields": fields})


def _one_statement(batch: list[_Pending]) -> bool:
    """Whether the group's live jobs are one statement: one job or one batch function's items."""
    live = [pending for pending in batch if not pending.abandoned]
    if not live or not all(pending.one_statement for pending in live):
        return False
    return len(live) == 1 or (live[0].batch is not None and all(p.batch == live[0].batch for p in live))
