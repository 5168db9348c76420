"""Refilling /v4's shards: when (a claim found a shard low, a worker starts), how (ledger first, then the pool),
and the bulk paths built on it (`flask init-shards`, the benchmark's prefill).

A refill reserves numbers in the kind's ledger (INSERT OR IGNORE under BEGIN IMMEDIATE: only new rows count),
and only then adds them to its shard as a job of the shard's writer, so no number is ever in two shards; a
per-shard flock lets one process at a time refill. A crash between the two loses the reserved numbers:
gaps, never a number served twice.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TypeVar

from uniquerand.logs import event
from uniquerand.numbers import KINDS, NumberKind
from uniquerand.storage import runtime
from uniquerand.storage.contract import InsufficientRemainingError, StoreBusyError, StoreSettings
from uniquerand.storage.sqlite.shard_files import ShardFiles, count_available, kind_of, ledger_name, shard_names
from uniquerand.storage.sqlite.shard_ledger import REFILL_CHUNK, add_to_shard, record_refill, reserve

log = logging.getLogger(__name__)
T = TypeVar("T")
# Runs `job` as one job of the named shard's writer, in a savepoint, waiting as long as a refill may.
ShardWrite = Callable[[str, Callable[[sqlite3.Connection], T]], T]

# Seconds before a failed refill of a shard may be scheduled again (so a broken disk is not hammered).
REFILL_RETRY_DELAY = 1.0


@dataclass(frozen=True)
class FillReport:
    shard: str
    added: int
    available: int


@dataclass
class _Scheduled:
    """This process's background refills, by shard."""

    guard: threading.Lock = field(default_factory=threading.Lock)
    running: dict[str, Future] = field(default_factory=dict)
    failed_at: dict[str, float] = field(default_factory=dict)
    rerun: set[str] = field(default_factory=set)


class ShardRefiller:
    def __init__(
        self,
        settings: StoreSettings,
        files: ShardFiles,
        write: ShardWrite,
        connection: Callable[[str], sqlite3.Connection],
        *,
        shard_size: int,
        refill_at: int,
    ) -> None:
        self.files = files
        self.spaces = settings.spaces
        self.label = settings.label
        self.max_attempts = settings.max_attempts
        self.lock_timeout = settings.lock_timeout
        self.shard_size = shard_size
        self.refill_at = refill_at
        self._write = write
        self._connection = connection
        self._scheduled = runtime.PerProcess(_Scheduled)

    def top_up_at_start(self) -> None:
        """Before a worker serves: tops up every shard below the refill mark, so that a fresh server's first
        requests find numbers instead of the "being refilled" 503. A server's workers start together: one
        refills each shard while the others wait for its refill lock, then find the shard full. A lock held
        past LOCK_TIMEOUT leaves the shard to the background refill."""
        for kind in KINDS:
            for name in shard_names(kind):
                with self.files.translated_errors(name):
                    # Empty counts as low whatever the mark (V4_REFILL_AT=0 refills only empty shards).
                    if count_available(self._connection(name)) >= max(self.refill_at, 1):
                        continue
                if self.refill(name, self.shard_size, wait=self.lock_timeout) is None:
                    self.schedule(name)

    def schedule(self, name: str) -> None:
        """A refill of shard `name` in the background, unless one runs (it then runs once more) or one failed
        less than REFILL_RETRY_DELAY ago."""
        scheduled = self._scheduled.get()
        with scheduled.guard:
            if name in scheduled.running:
                # The running refill may already have counted; it runs once more when it ends.
                scheduled.rerun.add(name)
                return
            if time.monotonic() - scheduled.failed_at.get(name, -REFILL_RETRY_DELAY) < REFILL_RETRY_DELAY:
                return
            try:
                scheduled.running[name] = runtime.start_background(
                    f"{self.label}-refill", self._refill_in_background, scheduled, name
                )
            except RuntimeError:
                event(log, "refill_not_scheduled", logging.WARNING, stage=self.label, shard=name)

    def _refill_in_background(self, scheduled: _Scheduled, name: str) -> None:
        while True:
            with scheduled.guard:
                scheduled.rerun.discard(name)
            failed = False
            try:
                # A short wait: a claim that checks for exhaustion holds the refill locks for milliseconds.
                self.refill(name, self.shard_size, wait=0.5)
            except Exception:
                failed = True
                # Logged and retried by a later claim that finds the shard low or empty.
                scheduled.failed_at[name] = time.monotonic()
                fields = {"stage": self.label, "shard": name}
                log.exception("refill_failed", extra={"event": "refill_failed", "fields": fields})
            with scheduled.guard:
                if failed or name not in scheduled.rerun:
                    scheduled.running.pop(name, None)
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
        with self.files.refill_locks([name], wait) as held:
            if not held:
                return None
            started, added = time.monotonic(), 0
            with self.files.translated_errors(name):
                connection = self._connection(name)
                available = count_available(connection)
                if available < target:
                    event(log, "refill_started", stage=self.label, shard=name, available=available, target=target)
                while available < target:
                    codes = self._reserve(kind, min(REFILL_CHUNK, target - available))
                    if not codes:
                        break
                    self._write(name, lambda connection, c=codes: add_to_shard(connection, c, used=0))
                    available += len(codes)
                    added += len(codes)
                    if progress:
                        progress(name, available, target)
                    if available >= target:
                        # Claims that ran meanwhile found this refill running and did not schedule another.
                        available = count_available(connection)
                if added:
                    seconds = time.monotonic() - started
                    self._write(name, lambda connection: record_refill(connection, added, seconds))
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
        with self.files.refill_locks([name], wait=max(60.0, self.lock_timeout)) as held:
            if not held:
                raise StoreBusyError(f"Another process keeps refilling {name}; try again later.")
            with self.files.translated_errors(name):
                done = 0
                while done < count:
                    codes = self._reserve(kind, min(REFILL_CHUNK * 5, count - done))
                    if not codes:
                        raise InsufficientRemainingError(count, done)
                    self._write(name, lambda connection, c=codes: add_to_shard(connection, c, used=1))
                    done += len(codes)
        for name in shard_names(kind):
            self.refill(name, self.shard_size, wait=max(60.0, self.lock_timeout))

    def _reserve(self, kind: NumberKind, wanted: int) -> list[int]:
        # A transaction of many draws, which may wait for another process's refill: off gevent's loop.
        connection = self._connection(ledger_name(kind))
        return runtime.run_blocking(reserve, connection, self.spaces[kind], wanted, self.max_attempts)
