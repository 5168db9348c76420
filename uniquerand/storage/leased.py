"""LeasedCounterStore: /v5's codes are space.low + P(counter), with counters leased in blocks from SQLite.

P is a keyed Feistel permutation of the space's indexes: the mixed-radix network over AES for a new database
(`uniquerand.aes_permutation`), an earlier release's network (`uniquerand.permutation`) for a database it
served; the database records which (see `counter_db.PERMUTATIONS`), so every counter of it is served by
the same P. The indexes of a block's next counters are computed together (`Leases.take_index`).
Concurrency: a lease [c, c + n) is one `UPDATE ... RETURNING` statement, so the leases of all processes
are disjoint; threads of a process take counters from its leases under one thread lock. P is a bijection,
so distinct counters are distinct codes: no code is ever issued twice.
Durability: WAL with `synchronous=FULL`, so a lease is on disk before any of its counters is served. A
crash loses at most the unserved rest of the leased blocks: gaps, never duplicates.
"""

from __future__ import annotations

import atexit
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager, suppress
from pathlib import Path

from uniquerand.logs import event
from uniquerand.numbers import KINDS, NumberKind, NumberSpace
from uniquerand.permutation import Permutation
from uniquerand.storage import native
from uniquerand.storage.base import (
    InsufficientRemainingError,
    SpaceExhaustedError,
    StoreBusyError,
    StoreError,
)
from uniquerand.storage.counter_db import (
    FILE_NAME,
    KEY_NAME,
    LEASE,
    CounterDatabase,
    PermutationType,
    remaining_in_counter,
)
from uniquerand.storage.leases import Block, Leases

log = logging.getLogger(__name__)


class _ProcessState:
    """Everything that must not cross a fork: locks, the connection, the thread, the leases, key and permutation."""

    def __init__(self, new_lock: Callable[[], _TimedLock]) -> None:
        self.pid = os.getpid()
        self.lock = new_lock()
        self.db_lock = new_lock()
        self.connection: sqlite3.Connection | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.key: bytes | None = None
        self.permutation_type: PermutationType | None = None
        self.exit_hook = False
        self.leases: dict[NumberKind, Leases] = {kind: Leases() for kind in KINDS}


class LeasedCounterStore:
    def __init__(
        self,
        folder: str | os.PathLike[str],
        spaces: dict[NumberKind, NumberSpace],
        *,
        label: str,
        block_size: int,
        lock_timeout: float,
    ) -> None:
        self.folder = Path(folder)
        self.path = self.folder / FILE_NAME
        self.key_path = self.folder / KEY_NAME
        self.spaces = spaces
        self.label = label
        self.block_size = block_size
        self.lock_timeout = lock_timeout
        self._counters = CounterDatabase(self.folder, spaces, label=label, lock_timeout=lock_timeout)
        self._process = _ProcessState(self._new_lock)
        # A child starts with nothing of its parent's: leases inherited by two processes would be served twice.
        this = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (store := this()) and store._reset_after_fork())

    def _reset_after_fork(self) -> None:
        self._process = _ProcessState(self._new_lock)

    def issue(self, kind: NumberKind, count: int = 1) -> list[int]:
        process = self._process
        leases = process.leases[kind]
        # A single number from the block being served: the typical request, without the housekeeping below.
        # (`permutation` is set once, under the lock, before any counter of this process is served.) Its
        # index comes from the indexes computed ahead a run of counters at a time (`Leases.take_index`).
        if count == 1 and leases.permutation is not None:
            with process.lock:
                index = leases.take_one()
            if index is not None:
                return [self.spaces[kind].low + index]
        with process.lock:
            self._ready(process)
            permutation = self._permutation(process, leases, kind)
            self._collect_prefetch(leases)
            if leases.available < count:
                self._top_up(process, kind, leases, count)
            if count <= permutation.run_length:
                # From the runs computed ahead, as on the fast path: a small batch of its own would pay a
                # run's fixed cost (~30 us with AES) for a few numbers.
                indexes, ranges = [leases.take_index() for _ in range(count)], []
            else:
                indexes, ranges = [], leases.take(count)
            if leases.wants_prefetch():
                # Fails only while the interpreter shuts down; the lease is then simply not taken early.
                with suppress(RuntimeError):
                    leases.prefetch = self._executor(process).submit(self._lease, process, kind, 1, self.block_size)
        low = self.spaces[kind].low
        # The permutation is pure, so a large batch's runs are computed outside the lock.
        indexes.extend(index for start, stop in ranges for index in permutation.many(start, stop - start))
        return [low + index for index in indexes]

    def prepare(self) -> None:
        """Loads the key and builds both permutations (tables: ~0.1 s), as a process's first requests would;
        leases nothing. Called when a worker starts, so that no request waits for it."""
        process = self._process
        with process.lock:
            self._ready(process)
            for kind in KINDS:
                self._permutation(process, process.leases[kind], kind)

    def prefill(self, kind: NumberKind, count: int) -> None:
        process = self._process
        with process.lock:
            self._ready(process)
            with self._database(process) as connection:
                rows = connection.execute(
                    "UPDATE counters SET next = next + :n, accounted = accounted + :n "
                    "WHERE kind = :kind AND high - low + 1 - next >= :n "
                    "AND low = :low AND high = :high AND decimals = :decimals RETURNING next",
                    {"n": count, **self._counters.space_of(kind)},
                ).fetchall()
                if not rows:
                    self._counters.check_spaces(connection)
                    raise InsufficientRemainingError(count, remaining_in_counter(connection, kind))

    def stats(self) -> dict[str, dict[str, int]]:
        process = self._process
        rows = {}
        # Stats never create the database: a missing one must still be noticed by the next issue().
        if self.path.exists():
            with self._database(process) as connection:
                query = "SELECT kind, next, accounted, skipped FROM counters"
                rows = {kind: values for kind, *values in connection.execute(query).fetchall()}
        result = {}
        for kind in KINDS:
            counter, accounted, skipped = rows.get(kind, (0, 0, 0))
            leases = process.leases[kind]
            with process.lock:
                held, served = leases.available, leases.served
            size = self.spaces[kind].size
            result[kind] = {
                "counter": counter,
                "issued": counter - held,
                "served_by_this_process": served,
                "held_by_this_process": held,
                "space_size": size,
                "remaining": size - counter + held,
                "skipped": skipped,
                "unaccounted": counter - accounted,
            }
        return result

    # Serving from memory.

    def _top_up(self, process: _ProcessState, kind: NumberKind, leases: Leases, count: int) -> None:
        """Makes `count` counters available in `leases`, or raises with none of them taken."""
        if leases.prefetch is not None:
            try:
                leases.prefetch.result(timeout=self.lock_timeout)
            except FutureTimeout:
                raise self._busy_error() from None
            except StoreError:
                pass
            self._collect_prefetch(leases)
        if leases.available >= count:
            return
        counter_remaining = 0
        if not leases.counter_exhausted:
            need = count - leases.available
            block = self._lease(process, kind, need, max(need, self.block_size))
            if block is not None:
                leases.add(block)
                return
            with self._database(process) as connection:
                counter_remaining = remaining_in_counter(connection, kind)
            leases.counter_exhausted = counter_remaining == 0
        remaining = leases.available + counter_remaining
        if remaining == 0 and count == 1:
            raise SpaceExhaustedError("All possible numbers have been used.")
        raise InsufficientRemainingError(count, remaining)

    def _collect_prefetch(self, leases: Leases) -> None:
        future = leases.prefetch
        if future is None or not future.done():
            return
        leases.prefetch = None
        try:
            block = future.result()
        except StoreError as err:
            # The next request that needs a lease takes it itself and reports the fault.
            event(log, "lease_failed", logging.WARNING, stage=self.label, error=str(err))
            return
        if block is None:
            leases.counter_exhausted = True
        else:
            leases.add(block)

    def _permutation(self, process: _ProcessState, leases: Leases, kind: NumberKind) -> Permutation:
        if leases.permutation is None:
            space = self.spaces[kind]
            tweak = f"{kind}:{space.low}:{space.high}:{space.decimals}".encode()
            leases.permutation = process.permutation_type(process.key, space.size, tweak)
        return leases.permutation

    def _executor(self, process: _ProcessState) -> ThreadPoolExecutor:
        if process.executor is None:
            process.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.label}-lease")
        return process.executor

    # The counter database.

    def _lease(self, process: _ProcessState, kind: NumberKind, need: int, want: int) -> Block | None:
        """Leases at least `need` and at most `want` counters in one durable statement; None if fewer than
        `need` are left."""
        with self._database(process) as connection:
            # A durable write, which may wait for another process's: off gevent's loop.
            rows = native.run(self._lease_rows, connection, kind, need, want)
            if not rows:
                return None
            start, stop = rows[0]
            process.leases[kind].leased += stop - start
            # The size only: counter values, with the key, are the numbers served.
            event(log, "lease_taken", stage=self.label, kind=kind, size=stop - start)
            if not process.exit_hook:
                atexit.register(self._close_leases, process)
                process.exit_hook = True
            return Block(start, stop)

    def _lease_rows(self, connection: sqlite3.Connection, kind: NumberKind, need: int, want: int) -> list[tuple]:
        rows = connection.execute(LEASE, {"need": need, "want": want, **self._counters.space_of(kind)}).fetchall()
        if not rows:
            # Raises if the counter was leased in another space; takes back an unused one; then once more.
            self._counters.check_spaces(connection)
            rows = connection.execute(LEASE, {"need": need, "want": want, **self._counters.space_of(kind)}).fetchall()
        return rows

    def _close_leases(self, process: _ProcessState) -> None:
        """At a clean exit, records how much of this process's leases went unserved (the known gaps)."""
        if process is not self._process or process.pid != os.getpid():
            return
        if process.executor is not None:
            process.executor.shutdown(wait=True)
        try:
            with self._database(process) as connection:
                for kind, leases in process.leases.items():
                    if leases.leased:
                        connection.execute(
                            "UPDATE counters SET accounted = accounted + ?, skipped = skipped + ? WHERE kind = ?",
                            (leases.leased, leases.leased - leases.served, kind),
                        )
                        leases.leased = leases.served = 0
        except StoreError as err:
            log.warning("could not record the unserved rest of the %s leases: %s", self.label, err)

    @contextmanager
    def _database(self, process: _ProcessState) -> Iterator[sqlite3.Connection]:
        with process.db_lock, self._counters.translated_errors():
            if process.connection is None:
                process.connection = self._counters.open()
            yield process.connection

    # The key and the permutation.

    def _ready(self, process: _ProcessState) -> None:
        """Loads (or, with a new database, creates) the key and the permutation's record; once per process."""
        if process.key is None:
            with self._database(process) as connection:
                process.key, process.permutation_type = self._counters.load_key_and_permutation(connection)

    def _new_lock(self) -> _TimedLock:
        return _TimedLock(self.lock_timeout, self._busy_error)

    def _busy_error(self) -> StoreBusyError:
        return StoreBusyError(f"The {self.label} store is busy; retry shortly.")


class _TimedLock:
    """A thread lock whose `with` gives up after `timeout` seconds with the error `busy` makes. One object per
    lock, made with it: /v5's typical request takes the lock, and building a wrapper for every `with` cost
    about a tenth of that request's path in the store."""

    __slots__ = ("_lock", "busy", "timeout")

    def __init__(self, timeout: float, busy: Callable[[], StoreBusyError]) -> None:
        self._lock = threading.Lock()
        self.timeout, self.busy = timeout, busy

    def __enter__(self) -> None:
        if not self._lock.acquire(timeout=self.timeout):
            raise self.busy()

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()
