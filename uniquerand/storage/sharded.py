"""ShardedSqliteStore: the design's fourth stage. Per type, two SQLite pools ("shards") of pre-drawn numbers,
refilled in the background from a ledger database of every number ever put into a pool.

Concurrency: a claim is one `UPDATE ... RETURNING` statement, atomic across every process by SQLite's write
lock; the threads of a process that claim at once share one statement and one fsync (group commit). A refill reserves
numbers in the ledger first (INSERT OR IGNORE under BEGIN IMMEDIATE: only new rows count) and only then adds
them to its shard, so no number is ever in two shards; a per-shard flock lets one process at a time refill.
Durability: WAL with synchronous=FULL: a claim is on disk before it is returned. A crash can lose numbers
(reserved but not yet in a shard, or claimed but not yet answered): gaps, never a number served twice.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from uniquerand.numbers import KINDS, NumberKind, NumberSpace
from uniquerand.storage.base import (
    InsufficientRemainingError,
    ShardsEmptyError,
    SpaceExhaustedError,
    StoreBusyError,
    StoreCorruptError,
    StoreUnavailableError,
)
from uniquerand.storage.picking import pick_unused
from uniquerand.storage.sqlite import connect, insert_new_codes, store_error

log = logging.getLogger(__name__)

SHARDS_PER_KIND = 2
# Rows per refill transaction: amortises the fsync while keeping claims' waits for the write lock short.
REFILL_CHUNK = 20_000
# Seconds before a failed refill of a shard may be scheduled again (so a broken disk is not hammered).
REFILL_RETRY_DELAY = 1.0
EMPTY_MESSAGE = "No available numbers. Shard is being refilled. Please retry shortly."
EXHAUSTED_MESSAGE = "All possible numbers have been used."

# `id` is the insertion order, i.e. the order of the random draws: claims take the oldest unused row, never
# the smallest code (that would serve small numbers first). The partial index holds only unused rows, so a
# claim's cost does not grow with the rows already used. used: 0 unused, 1 claimed, 2 retired (out of range).
# No UNIQUE on `code`: the ledger's PRIMARY KEY already keeps a code out of every other row of every shard,
# and a second random-key index would double the cost of a refill.
SHARD_SCHEMA = """
CREATE TABLE IF NOT EXISTS pool (id INTEGER PRIMARY KEY, code INTEGER NOT NULL, used INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS pool_unused ON pool (id) WHERE used = 0;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
"""
LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (code INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
"""
CLAIM = (
    "UPDATE pool SET used = 1 WHERE id IN (SELECT id FROM pool WHERE used = 0 ORDER BY id LIMIT ?) "
    "RETURNING id, code, (SELECT max(id) FROM pool)"
)


def shard_names(kind: NumberKind) -> list[str]:
    return [f"{kind}_shard_{index}.db" for index in range(SHARDS_PER_KIND)]


def ledger_name(kind: NumberKind) -> str:
    return f"used_numbers_{kind}.db"


def _new_id() -> int:
    return secrets.randbits(62)


def _kind_of(name: str) -> NumberKind:
    """The kind of a shard or ledger file name."""
    return "int" if name.startswith(("int_", ledger_name("int"))) else "float"


@dataclass
class _ClaimRequest:
    """One caller's share of a group claim: filled in (or failed) by whichever thread runs the statement."""

    count: int
    lead: bool = False
    ready: threading.Event = field(default_factory=threading.Event)
    rows: list[tuple[int, int]] = field(default_factory=list)
    max_id: int = 0
    error: BaseException | None = None


@dataclass
class _ProcessState:
    """What must never cross a fork: connections, locks, the refill pool and its bookkeeping."""

    pid: int = field(default_factory=os.getpid)
    guard: threading.Lock = field(default_factory=threading.Lock)
    claim_queues: dict[str, list[_ClaimRequest]] = field(default_factory=dict)
    leading: set[str] = field(default_factory=set)
    claim_connections: dict[str, sqlite3.Connection] = field(default_factory=dict)
    claim_lock_files: dict[str, int] = field(default_factory=dict)
    local: threading.local = field(default_factory=threading.local)
    executor: ThreadPoolExecutor | None = None
    refills: dict[str, Future] = field(default_factory=dict)
    failed_at: dict[str, float] = field(default_factory=dict)
    rerun: set[str] = field(default_factory=set)
    exhausted: set[str] = field(default_factory=set)


def _flock_by(descriptor: int, deadline: float, longest_pause: float) -> bool:
    """Takes an exclusive flock on `descriptor` before `deadline` (monotonic); False if it could not.

    Polls with a growing pause: a blocking flock could not give up in time if the holder were stopped.
    """
    pause = min(0.0001, longest_pause)
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, longest_pause)


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
        start = secrets.randbelow(len(names))
        claimed: list[tuple[str, int, int]] = []
        for name in names[start:] + names[:start]:
            claimed += [(name, row_id, code) for row_id, code in self._claim_from(name, count - len(claimed))]
            if len(claimed) == count:
                return [(code, name) for name, _, code in claimed]
        self._release(claimed)
        self._raise_shortage(kind, count)
        raise AssertionError("unreachable")

    def _claim_from(self, name: str, count: int) -> list[tuple[int, int]]:
        """Group commit: claims that arrive while one runs are served together by the next statement (one
        fsync for all of them); each caller returns only after the statement holding its rows committed."""
        state = self._state()
        request = _ClaimRequest(count)
        with state.guard:
            state.claim_queues.setdefault(name, []).append(request)
            if name not in state.leading:
                state.leading.add(name)
                request.lead = True
        if not request.lead and not request.ready.wait(self._follower_timeout()):
            self._give_up(state, name, request)
        if request.lead:
            self._lead_claims(name)
        if request.error is not None:
            raise request.error
        rows = request.rows
        if len(rows) < count or request.max_id - rows[-1][0] < self.refill_at:
            # Unused rows all lie above the claimed ids, so max(id) - last claimed id counts what is left.
            self._schedule_refill(name)
        return rows

    def _follower_timeout(self) -> float:
        # A leader may wait for the open lock, the claim lock and SQLite in turn, each up to LOCK_TIMEOUT.
        return 3 * self.lock_timeout + 1

    def _give_up(self, state: _ProcessState, name: str, request: _ClaimRequest) -> None:
        """A follower that waited too long answers busy instead of hanging. If it was still queued it
        leaves the queue (nothing was claimed for it); if a running statement holds its rows, they are
        burned: marked used and never served."""
        with state.guard:
            if request.lead or request.ready.is_set():
                return  # promoted or served just now: go on as usual
            queue = state.claim_queues.get(name, [])
            if request in queue:
                queue.remove(request)
        raise StoreBusyError(f"The {self.label} store is busy; retry shortly.")

    def _lead_claims(self, name: str) -> None:
        """Runs one claim statement for every queued request, then hands the lead to the next in line."""
        state = self._state()
        with state.guard:
            batch, state.claim_queues[name] = state.claim_queues[name], []
        try:
            with self._translated_errors(name):
                connection = state.claim_connections.get(name)
                if connection is None:
                    connection = state.claim_connections[name] = self._open(name)
                # fetchall(): an unfinished RETURNING statement would keep the write lock held.
                with self._claim_lock(state, name):
                    rows = sorted(connection.execute(CLAIM, (sum(r.count for r in batch),)).fetchall())
            for request in batch:
                request.rows = [(row_id, code) for row_id, code, _ in rows[: request.count]]
                request.max_id = rows[0][2] if rows else 0
                rows = rows[request.count :]
        except BaseException as err:
            for request in batch:
                request.error = err
            raise
        finally:
            for request in batch:
                request.lead = False
                request.ready.set()
            with state.guard:
                waiting = state.claim_queues[name]
                if waiting:
                    waiting[0].lead = True
                    waiting[0].ready.set()
                else:
                    state.leading.discard(name)

    def _release(self, claimed: list[tuple[str, int, int]]) -> None:
        """Puts back rows claimed for a batch that could not be completed; they were never answered."""
        for name in {name for name, _, _ in claimed}:
            ids = [row_id for shard, row_id, _ in claimed if shard == name]
            try:
                with self._translated_errors(name):
                    placeholders = ",".join("?" * len(ids))
                    self._connection(name).execute(f"UPDATE pool SET used = 0 WHERE id IN ({placeholders})", ids)
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
        with self._refill_locks(shard_names(kind), wait=0.0) as held:
            if not held:
                return None
            with self._translated_errors("ledger"):
                available = sum(self._available(self._connection(name)) for name in shard_names(kind))
                return self.spaces[kind].size - self._ledger_count(kind) + available

    # -- refilling ------------------------------------------------------------------------------------------

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
                log.exception("refill of %s failed; it will be retried", name)
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
        kind = _kind_of(name)
        with self._refill_locks([name], wait) as held:
            if not held:
                return None
            started, added = time.monotonic(), 0
            with self._translated_errors(name):
                connection = self._connection(name)
                available = self._available(connection)
                while available < target:
                    codes = self._reserve(kind, min(REFILL_CHUNK, target - available))
                    if not codes:
                        break
                    self._insert(connection, codes, used=0)
                    available += len(codes)
                    added += len(codes)
                    if progress:
                        progress(name, available, target)
                    if available >= target:
                        # Claims that ran meanwhile found this refill running and did not schedule another.
                        available = self._available(connection)
                if added:
                    self._record_refill(connection, added, time.monotonic() - started)
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
        with self._refill_locks([name], wait=max(60.0, self.lock_timeout)) as held:
            if not held:
                raise StoreBusyError(f"Another process keeps refilling {name}; try again later.")
            with self._translated_errors(name):
                connection = self._connection(name)
                done = 0
                while done < count:
                    codes = self._reserve(kind, min(REFILL_CHUNK * 5, count - done))
                    if not codes:
                        raise InsufficientRemainingError(count, done)
                    self._insert(connection, codes, used=1)
                    done += len(codes)
        for name in shard_names(kind):
            self.refill(name, self.shard_size, wait=max(60.0, self.lock_timeout))

    def _reserve(self, kind: NumberKind, wanted: int) -> list[int]:
        """Up to `wanted` codes newly recorded in the ledger (committed before returning), fewer only when
        the space runs out. Codes are in the order they were drawn."""
        space = self.spaces[kind]
        connection = self._connection(ledger_name(kind))
        with _transaction(connection):
            recorded = self._ledger_count(kind, connection)
            wanted = min(wanted, space.size - recorded)
            codes = [] if wanted <= 0 else self._pick(connection, space, wanted, recorded)
            connection.execute("UPDATE meta SET value = value + ? WHERE key = 'count'", (len(codes),))
            return codes

    def _pick(self, connection: sqlite3.Connection, space: NumberSpace, count: int, recorded: int) -> list[int]:
        new = 0

        def claim(code: int) -> bool:
            nonlocal new
            inserted = connection.execute("INSERT OR IGNORE INTO ledger (code) VALUES (?)", (code,)).rowcount == 1
            new += inserted
            return inserted

        def claim_many(codes: list[int]) -> list[int]:
            nonlocal new
            inserted = insert_new_codes(connection, "ledger", codes)
            new += len(inserted)
            return inserted

        def used_ascending() -> Iterator[int]:
            cursor = connection.execute("SELECT code FROM ledger WHERE code >= ? ORDER BY code", (space.low,))
            try:
                yield from (code for (code,) in cursor)
            finally:
                cursor.close()

        drawing = _BulkDrawingSpace(space)
        return pick_unused(drawing, count, self.max_attempts, claim, lambda: recorded + new, used_ascending, claim_many)

    @staticmethod
    def _insert(connection: sqlite3.Connection, codes: list[int], used: int) -> None:
        with _transaction(connection):
            connection.executemany("INSERT INTO pool (code, used) VALUES (?, ?)", ((code, used) for code in codes))

    @staticmethod
    def _record_refill(connection: sqlite3.Connection, added: int, seconds: float) -> None:
        with _transaction(connection):
            connection.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [("last_refill_at", time.time()), ("last_refill_added", added), ("last_refill_seconds", seconds)],
            )

    def _refill_locks(self, names: list[str], wait: float):
        """flock on `<shard>.refill.lock` for every name (True) or none of them (False) within `wait`.
        The kernel drops an flock when its process dies, so a killed refill never blocks the shard."""
        return self._flocks([f"{name}.refill.lock" for name in names], wait)

    @contextmanager
    def _claim_lock(self, state: _ProcessState, name: str) -> Iterator[None]:
        """Claimers of every process take turns on `<shard>.claim.lock` before the claim statement.

        SQLite's busy handler backs off in sleeps of up to 100 ms when writers of several processes meet;
        a short poll on an flock hands the shard over within a fraction of a millisecond instead.
        """
        descriptor = state.claim_lock_files.get(name)
        if descriptor is None:
            descriptor = os.open(self.folder / f"{name}.claim.lock", os.O_RDWR | os.O_CREAT, 0o644)
            state.claim_lock_files[name] = descriptor
        if not _flock_by(descriptor, time.monotonic() + self.lock_timeout, longest_pause=0.002):
            raise StoreBusyError(f"The {self.label} store is busy; retry shortly.")
        try:
            yield
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)

    @contextmanager
    def _flocks(self, lock_files: list[str], wait: float) -> Iterator[bool]:
        self.folder.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait
        descriptors: list[int] = []
        try:
            for lock_file in lock_files:
                descriptor = os.open(self.folder / lock_file, os.O_RDWR | os.O_CREAT, 0o644)
                descriptors.append(descriptor)
                if not _flock_by(descriptor, deadline, longest_pause=0.05):
                    yield False
                    return
            yield True
        finally:
            for descriptor in descriptors:
                os.close(descriptor)

    # -- stats ----------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, dict]:
        result: dict[str, dict] = {}
        for kind in KINDS:
            shards = {name: self._shard_stats(name) for name in shard_names(kind)}
            with self._translated_errors("ledger"):
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
        with self._translated_errors(name):
            connection = self._connection(name)
            available = self._available(connection)
            rows = connection.execute("SELECT max(id) FROM pool").fetchone()[0] or 0
            meta = dict(connection.execute("SELECT key, value FROM meta"))
        with self._refill_locks([name], wait=0.0) as free:
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

    @staticmethod
    def _available(connection: sqlite3.Connection) -> int:
        return connection.execute("SELECT COUNT(*) FROM pool WHERE used = 0").fetchone()[0]

    def _ledger_count(self, kind: NumberKind, connection: sqlite3.Connection | None = None) -> int:
        """Ledger codes inside the space, kept in `meta` by every reservation (a COUNT would scan the ledger)."""
        connection = connection or self._connection(ledger_name(kind))
        return connection.execute("SELECT value FROM meta WHERE key = 'count'").fetchone()[0]

    def _state(self) -> _ProcessState:
        process = self._process
        if process is None or process.pid != os.getpid():
            with self._state_guard:
                if self._process is None or self._process.pid != os.getpid():
                    self._process = _ProcessState()
                process = self._process
        return process

    def _connection(self, name: str) -> sqlite3.Connection:
        """This thread's connection to file `name` of the stage's folder (refills, stats, releases)."""
        local = self._state().local
        connections = local.__dict__.setdefault("connections", {})
        if name not in connections:
            connections[name] = self._open(name)
        return connections[name]

    def _open(self, name: str) -> sqlite3.Connection:
        # Two processes switching a new file to WAL at once get "database is locked" without waiting.
        with self._flocks([".open.lock"], self.lock_timeout) as held:
            if not held:
                raise StoreBusyError(f"The {self.label} store is busy; retry shortly.")
            return self._open_unlocked(name)

    def _open_unlocked(self, name: str) -> sqlite3.Connection:
        connection = connect(self.folder / name, self.lock_timeout)
        try:
            if name == ledger_name(_kind_of(name)):
                # Refills insert random keys all over the ledger's B-tree: keep more of it in memory.
                connection.execute("PRAGMA cache_size = -65536")
                connection.executescript(LEDGER_SCHEMA)
                self._check_meta(connection, name, "float_decimals", self.spaces["float"].decimals)
                connection.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('ledger_id', ?)", (_new_id(),))
                self._count_ledger_in_range(connection, _kind_of(name))
            else:
                connection.executescript(SHARD_SCHEMA)
                self._check_meta(connection, name, "float_decimals", self.spaces["float"].decimals)
                self._check_ledger_id(connection, name)
                self._retire_out_of_range(connection, _kind_of(name))
        except BaseException:
            connection.close()
            raise
        return connection

    def _check_ledger_id(self, connection: sqlite3.Connection, name: str) -> None:
        """A shard belongs to the ledger it was filled from. A ledger that was deleted or emptied comes back
        as a new one, with a new id, that no longer knows what the shards served: it would pool those
        numbers again, so the shard refuses to serve."""
        ledger = self._open_unlocked(ledger_name(_kind_of(name)))
        try:
            ledger_id = ledger.execute("SELECT value FROM meta WHERE key = 'ledger_id'").fetchone()[0]
        finally:
            ledger.close()
        connection.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('ledger_id', ?)", (ledger_id,))
        if connection.execute("SELECT value FROM meta WHERE key = 'ledger_id'").fetchone()[0] != ledger_id:
            raise StoreCorruptError(
                f"The {self.label} shard {name} was filled from another ledger than {ledger_name(_kind_of(name))}: "
                "the ledger was replaced or emptied and would pool served numbers again. Restore it, or delete "
                "the stage's folder to reset the stage."
            )

    def _check_meta(self, connection: sqlite3.Connection, name: str, key: str, value: int) -> None:
        connection.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
        stored = connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]
        if stored != value:
            raise StoreCorruptError(
                f"The {self.label} file {name} was written with FLOAT_DECIMALS={stored} but the server runs "
                f"with {value}; its floats cannot be reinterpreted safely."
            )

    def _count_ledger_in_range(self, connection: sqlite3.Connection, kind: NumberKind) -> None:
        """(Re)counts the ledger's codes inside the space: once, and again only after the range changed."""
        space = self.spaces[kind]
        if self._bounds(connection) == {"low": space.low, "high": space.high}:
            return
        with _transaction(connection):
            query = "SELECT COUNT(*) FROM ledger WHERE code BETWEEN ? AND ?"
            count = connection.execute(query, (space.low, space.high)).fetchone()[0]
            connection.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [("count", count), ("low", space.low), ("high", space.high)],
            )

    @staticmethod
    def _bounds(connection: sqlite3.Connection) -> dict[str, int]:
        return dict(connection.execute("SELECT key, value FROM meta WHERE key IN ('low', 'high')"))

    def _retire_out_of_range(self, connection: sqlite3.Connection, kind: NumberKind) -> None:
        """After INT_*/FLOAT_* changed, unused rows outside the new space must never be served."""
        space = self.spaces[kind]
        if self._bounds(connection) == {"low": space.low, "high": space.high}:
            return
        with _transaction(connection):
            retired = connection.execute(
                "UPDATE pool SET used = 2 WHERE used = 0 AND code NOT BETWEEN ? AND ?", (space.low, space.high)
            ).rowcount
            connection.execute(
                "INSERT INTO meta (key, value) VALUES ('retired', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                (retired,),
            )
            connection.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [("low", space.low), ("high", space.high)]
            )

    @contextmanager
    def _translated_errors(self, name: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as err:
            raise store_error(err, f"{self.label} {name}") from err
        except OSError as err:
            raise StoreUnavailableError(f"The {self.label} store cannot be used: {err.strerror}.") from err


@contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE (take the write lock before reading, see PERF-NOTES) ... COMMIT, or ROLLBACK."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        # SQLite may have rolled back already (a full disk); a second ROLLBACK would hide the first error.
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


class _BulkDrawingSpace:
    """`space` whose draws come from os.urandom in bulk: the same uniform CSPRNG draws as NumberSpace.draw
    (masking then rejection sampling, as secrets.randbelow does), without two system calls per number."""

    def __init__(self, space: NumberSpace) -> None:
        self._space = space
        self._draws = self._words(space)

    def __getattr__(self, name: str):
        return getattr(self._space, name)

    def draw(self) -> int:
        return next(self._draws)

    @staticmethod
    def _words(space: NumberSpace) -> Iterator[int]:
        # Spaces stay within +-2**53 (config.validate), so 64 random bits always cover one draw.
        mask = (1 << (space.size - 1).bit_length()) - 1
        while True:
            for (word,) in struct.iter_unpack("<Q", os.urandom(8 * 4096)):
                if (word & mask) < space.size:
                    yield space.low + (word & mask)
