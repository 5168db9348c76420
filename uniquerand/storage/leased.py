"""LeasedCounterStore: /v5's codes are space.low + P(counter), with counters leased in blocks from SQLite.

Concurrency: a lease [c, c + n) is one `UPDATE ... RETURNING` statement, so the leases of all processes
are disjoint; threads of a process take counters from its leases under one thread lock. P is a bijection
(see `uniquerand.permutation`), so distinct counters are distinct codes: no code is ever issued twice.
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
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from uniquerand.numbers import KINDS, NumberKind, NumberSpace
from uniquerand.permutation import FeistelPermutation
from uniquerand.storage.base import (
    InsufficientRemainingError,
    SpaceExhaustedError,
    StoreBusyError,
    StoreCorruptError,
    StoreError,
    StoreKeyError,
    StoreUnavailableError,
)
from uniquerand.storage.keyfile import create_key, fingerprint, read_key
from uniquerand.storage.sqlite import connect, store_error

log = logging.getLogger(__name__)

FILE_NAME = "counters.db"
KEY_NAME = "key"
# Share of the current block served before the next one is leased in the background.
PREFETCH_AT = 0.1
# Near the end of the space a lease takes at most 1/TAIL_SHARE of what is left, so that the numbers
# held unserved by other workers when the counter runs out stay few (see README, /v5).
TAIL_SHARE = 16
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS counters (
    kind TEXT PRIMARY KEY,
    low INTEGER NOT NULL,
    high INTEGER NOT NULL,
    decimals INTEGER NOT NULL,
    next INTEGER NOT NULL DEFAULT 0,
    lease_start INTEGER NOT NULL DEFAULT 0,
    accounted INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0
);
"""
# `next` is the high-water mark: every counter below it belongs to a lease (or a prefill). SET reads
# the old row, so lease_start is where this lease begins. `accounted` counts leases closed cleanly
# (and prefills), `skipped` their counters never served.
LEASE = f"""
UPDATE counters
SET lease_start = next,
    next = next + max(:need, min(:want, (high - low + 1 - next + {TAIL_SHARE - 1}) / {TAIL_SHARE}))
WHERE kind = :kind AND high - low + 1 - next >= :need
  AND low = :low AND high = :high AND decimals = :decimals
RETURNING lease_start, next
"""


@dataclass
class _Block:
    """Counters [position, stop) of a lease that began at `start`, not yet served."""

    start: int
    stop: int
    position: int = field(init=False)

    def __post_init__(self) -> None:
        self.position = self.start


@dataclass
class _Leases:
    """One kind's counters in this process: blocks in lease order, the first one being served."""

    blocks: deque[_Block] = field(default_factory=deque)
    prefetch: Future | None = None
    counter_exhausted: bool = False
    leased: int = 0
    served: int = 0
    permutation: FeistelPermutation | None = None

    @property
    def available(self) -> int:
        return sum(block.stop - block.position for block in self.blocks)

    def take(self, count: int) -> list[tuple[int, int]]:
        ranges = []
        while count:
            block = self.blocks[0]
            stop = min(block.stop, block.position + count)
            ranges.append((block.position, stop))
            count -= stop - block.position
            block.position = stop
            if block.position == block.stop:
                self.blocks.popleft()
        self.served += sum(stop - start for start, stop in ranges)
        return ranges

    def wants_prefetch(self) -> bool:
        if self.prefetch is not None or self.counter_exhausted or len(self.blocks) > 1:
            return False
        if not self.blocks:
            return True
        block = self.blocks[0]
        return block.position - block.start >= PREFETCH_AT * (block.stop - block.start)


class _ProcessState:
    """Everything that must not cross a fork: locks, the connection, the thread, the leases, the key."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.db_lock = threading.Lock()
        self.connection: sqlite3.Connection | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.key: bytes | None = None
        self.exit_hook = False
        self.leases: dict[NumberKind, _Leases] = {kind: _Leases() for kind in KINDS}


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
        self._process = _ProcessState()
        # A child starts with nothing of its parent's: leases inherited by two processes would be served twice.
        this = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (store := this()) and store._reset_after_fork())

    def _reset_after_fork(self) -> None:
        self._process = _ProcessState()

    def issue(self, kind: NumberKind, count: int = 1) -> list[int]:
        process = self._process
        with self._locked(process.lock):
            self._ready(process)
            leases = process.leases[kind]
            permutation = self._permutation(leases, kind, process.key)
            self._collect_prefetch(leases)
            if leases.available < count:
                self._top_up(process, kind, leases, count)
            ranges = leases.take(count)
            if leases.wants_prefetch():
                # Fails only while the interpreter shuts down; the lease is then simply not taken early.
                with suppress(RuntimeError):
                    leases.prefetch = self._executor(process).submit(self._lease, process, kind, 1, self.block_size)
        low = self.spaces[kind].low
        # The permutation is pure, so it runs outside the lock.
        return [low + index for start, stop in ranges for index in permutation.many(start, stop - start)]

    def prefill(self, kind: NumberKind, count: int) -> None:
        process = self._process
        with self._locked(process.lock):
            self._ready(process)
            with self._database(process) as connection:
                rows = connection.execute(
                    "UPDATE counters SET next = next + :n, accounted = accounted + :n "
                    "WHERE kind = :kind AND high - low + 1 - next >= :n "
                    "AND low = :low AND high = :high AND decimals = :decimals RETURNING next",
                    {"n": count, **self._space_of(kind)},
                ).fetchall()
                if not rows:
                    self._check_spaces(connection)
                    raise InsufficientRemainingError(count, self._counter_remaining(connection, kind))

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
            with self._locked(process.lock):
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

    def _top_up(self, process: _ProcessState, kind: NumberKind, leases: _Leases, count: int) -> None:
        """Makes `count` counters available in `leases`, or raises with none of them taken."""
        if leases.prefetch is not None:
            try:
                leases.prefetch.result(timeout=self.lock_timeout)
            except FutureTimeout:
                raise StoreBusyError(f"The {self.label} store is busy; retry shortly.") from None
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
                leases.blocks.append(block)
                return
            with self._database(process) as connection:
                counter_remaining = self._counter_remaining(connection, kind)
            leases.counter_exhausted = counter_remaining == 0
        remaining = leases.available + counter_remaining
        if remaining == 0 and count == 1:
            raise SpaceExhaustedError("All possible numbers have been used.")
        raise InsufficientRemainingError(count, remaining)

    def _collect_prefetch(self, leases: _Leases) -> None:
        future = leases.prefetch
        if future is None or not future.done():
            return
        leases.prefetch = None
        try:
            block = future.result()
        except StoreError as err:
            # The next request that needs a lease takes it itself and reports the fault.
            log.warning("background lease failed: %s", err)
            return
        if block is None:
            leases.counter_exhausted = True
        else:
            leases.blocks.append(block)

    def _permutation(self, leases: _Leases, kind: NumberKind, key: bytes) -> FeistelPermutation:
        if leases.permutation is None:
            space = self.spaces[kind]
            tweak = f"{kind}:{space.low}:{space.high}:{space.decimals}".encode()
            leases.permutation = FeistelPermutation(key, space.size, tweak)
        return leases.permutation

    def _executor(self, process: _ProcessState) -> ThreadPoolExecutor:
        if process.executor is None:
            process.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.label}-lease")
        return process.executor

    # The counter database.

    def _lease(self, process: _ProcessState, kind: NumberKind, need: int, want: int) -> _Block | None:
        """Leases at least `need` and at most `want` counters in one durable statement; None if fewer than
        `need` are left."""
        with self._database(process) as connection:
            rows = connection.execute(LEASE, {"need": need, "want": want, **self._space_of(kind)}).fetchall()
            if not rows:
                # Raises if the counter was leased in another space; takes back an unused one; then once more.
                self._check_spaces(connection)
                rows = connection.execute(LEASE, {"need": need, "want": want, **self._space_of(kind)}).fetchall()
            if not rows:
                return None
            start, stop = rows[0]
            process.leases[kind].leased += stop - start
            if not process.exit_hook:
                atexit.register(self._close_leases, process)
                process.exit_hook = True
            return _Block(start, stop)

    def _space_of(self, kind: NumberKind) -> dict[str, object]:
        """The statement parameters that tie a lease to this process's space: a counter of another space
        (another process, other settings) must never be leased under this one's permutation."""
        space = self.spaces[kind]
        return {"kind": kind, "low": space.low, "high": space.high, "decimals": space.decimals}

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

    @staticmethod
    def _counter_remaining(connection: sqlite3.Connection, kind: NumberKind) -> int:
        query = "SELECT high - low + 1 - next FROM counters WHERE kind = ?"
        return connection.execute(query, (kind,)).fetchone()[0]

    @contextmanager
    def _database(self, process: _ProcessState) -> Iterator[sqlite3.Connection]:
        with self._locked(process.db_lock), self._translated_errors():
            if process.connection is None:
                process.connection = self._open()
            yield process.connection

    def _open(self) -> sqlite3.Connection:
        if not self.path.exists() and self.key_path.exists():
            raise StoreKeyError(
                f"The {self.label} store's counter database ({FILE_NAME}) is missing but its key exists: a new "
                "counter would re-issue numbers. Restore the database, or delete the key to reset the stage."
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        connection = connect(self.path, self.lock_timeout)
        try:
            connection.executescript(SCHEMA)
            connection.execute("BEGIN IMMEDIATE")
            try:
                self._check_spaces(connection)
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        except BaseException:
            connection.close()
            raise
        return connection

    def _check_spaces(self, connection: sqlite3.Connection) -> None:
        for kind in KINDS:
            space = self.spaces[kind]
            wanted = (space.low, space.high, space.decimals)
            connection.execute(
                "INSERT OR IGNORE INTO counters (kind, low, high, decimals) VALUES (?, ?, ?, ?)", (kind, *wanted)
            )
            # A counter indexes one space only; before anything is leased the space may still change.
            connection.execute(
                "UPDATE counters SET low = ?, high = ?, decimals = ? WHERE kind = ? AND next = 0", (*wanted, kind)
            )
            stored = connection.execute("SELECT low, high, decimals FROM counters WHERE kind = ?", (kind,)).fetchone()
            if tuple(stored) != wanted:
                settings = "INT_MIN/INT_MAX" if kind == "int" else "FLOAT_MIN/FLOAT_MAX/FLOAT_DECIMALS"
                raise StoreCorruptError(
                    f"The {self.label} store's {kind} counter was written for another space ({settings} changed); "
                    "serving it in this one could re-issue numbers."
                )

    # The key.

    def _ready(self, process: _ProcessState) -> None:
        """Loads (or, with a new database, creates) the key; once per process."""
        if process.key is None:
            with self._database(process) as connection:
                process.key = self._load_key(connection)

    def _load_key(self, connection: sqlite3.Connection) -> bytes:
        """The key, checked against the one-way fingerprint the database keeps of it.

        All of it runs under the database's write lock, so a key is published and fingerprinted before any
        other process looks. A key without a fingerprint means the database was replaced or emptied (a
        truncated counters.db opens as a new, empty one): counting from 0 again with that key would replay
        every number, so the stage refuses. A crash between publishing a new key and committing its
        fingerprint also leaves that state; it is refused too (fail closed: delete the folder to reset)."""
        connection.execute("BEGIN IMMEDIATE")
        try:
            leased = connection.execute("SELECT max(next) FROM counters").fetchone()[0] > 0
            row = connection.execute("SELECT value FROM meta WHERE name = 'key_fingerprint'").fetchone()
            key = read_key(self.key_path, self.label)
            if key is None:
                if leased or row is not None:
                    raise StoreKeyError(
                        f"The {self.label} store's key is missing but its counters have been used: a new key "
                        "would re-issue numbers. Restore the key file from where the counters came from."
                    )
                key = create_key(self.key_path, self.label)
                connection.execute("INSERT INTO meta (name, value) VALUES ('key_fingerprint', ?)", (fingerprint(key),))
            elif row is None:
                raise StoreKeyError(
                    f"The {self.label} store's counter database ({FILE_NAME}) has no record of its key: it was "
                    "replaced or emptied, and counting again would re-issue numbers. Restore it, or delete the "
                    "stage's folder to reset the stage."
                )
            elif row[0] != fingerprint(key):
                raise StoreKeyError(
                    f"The {self.label} store's key is not the one its counters were used with; it was left as is."
                )
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        return key

    @contextmanager
    def _locked(self, lock: threading.Lock) -> Iterator[None]:
        if not lock.acquire(timeout=self.lock_timeout):
            raise StoreBusyError(f"The {self.label} store is busy; retry shortly.")
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def _translated_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as err:
            raise store_error(err, self.label) from err
        except OSError as err:
            raise StoreUnavailableError(f"The {self.label} store cannot be used: {err.strerror}.") from err
