"""LeasedCounterStore: /v5's codes are space.low + P(counter), with counters leased in blocks from a counter
backend (`leases.Counters`; SQLite's is `sqlite.counters.SqliteCounters`) and served from memory.

P is a keyed Feistel permutation of the space's indexes: the mixed-radix network over AES for a new database
(`uniquerand.aes_permutation`), an earlier release's network (`uniquerand.permutation`) for a database it
served; the database records which (see `keyfile.PERMUTATIONS`), so every counter of it is served by the
same P. The indexes of a block's next counters are computed together (`Leases.take_index`).
Concurrency: a lease [c, c + n) is one durable transaction of the backend, so the leases of all processes are
disjoint; threads of a process take counters from its leases under one thread lock. P is a bijection, so
distinct counters are distinct codes: no code is ever issued twice.
Durability: a lease is durable before any of its counters is served. A crash loses at most the unserved
rest of the leased blocks: gaps, never duplicates.
Lease size: `block_size` counters; a worker that served its last lease within GROW_WITHIN seconds takes the
next one twice as large, up to `growth` x `block_size`, and halves it again once a lease lasts SHRINK_AFTER
seconds. A batch of 1000 from leases of 1000 would otherwise cost a durable write per request. Only in
spaces of at least MIN_SPACE_PER_LEASE largest leases, so that what a crash may skip stays a sliver.
"""

from __future__ import annotations

import atexit
import logging
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress

from uniquerand.logs import event
from uniquerand.numbers import KINDS, NumberKind
from uniquerand.permutation import Permutation
from uniquerand.storage import runtime
from uniquerand.storage.contract import (
    HeldElsewhereError,
    InsufficientRemainingError,
    Issued,
    Prefilling,
    SpaceExhaustedError,
    Store,
    StoreBusyError,
    StoreError,
    StoreSettings,
)
from uniquerand.storage.keyfile import PermutationType
from uniquerand.storage.leases import Block, Counters, Leases
from uniquerand.storage.runtime import TimedLock

log = logging.getLogger(__name__)
# The counter's last TAIL_BLOCKS blocks are leased a request at a time, none ahead: when it runs out, few
# numbers are held unserved by workers that may not be asked again soon.
TAIL_BLOCKS = 16
# Lease growth (see the module's docstring).
GROW_WITHIN = 1.0
SHRINK_AFTER = 10.0
MIN_SPACE_PER_LEASE = 1000
HELD_ELSEWHERE_MESSAGE = "The numbers left are held by other workers, which serve them; retry shortly."


class _ProcessState:
    """Everything that must not cross a fork: the lock, the leases, the key and permutation, the exit hook."""

    def __init__(self, lock_timeout: float, busy: Callable[[], StoreBusyError]) -> None:
        self.lock = TimedLock(lock_timeout, busy)
        self.key: bytes | None = None
        self.permutation_type: PermutationType | None = None
        self.exit_hook = False
        self.leases: dict[NumberKind, Leases] = {kind: Leases() for kind in KINDS}


class LeasedCounterStore(Store, Prefilling):
    def __init__(
        self,
        settings: StoreSettings,
        counters: Counters,
        *,
        block_size: int,
        growth: int = 1,
        tweak: str = "",
        table_limit: int = 0,
    ) -> None:
        super().__init__(settings)
        self.counters = counters
        self.block_size = block_size
        self.clock = time.monotonic  # what lease growth measures with (tests give it their own)
        # Per kind, the largest lease a worker takes (see the module's docstring).
        self.largest_lease = {
            kind: block_size * growth if space.size >= MIN_SPACE_PER_LEASE * block_size * growth else block_size
            for kind, space in self.spaces.items()
        }
        # Separates the permutations of named spaces (`storage.spaces`), whose ranges may be the same.
        self.tweak = tweak
        # Round tables only for spaces of at most this many numbers (0: the permutation's own rule). A table
        # makes each number cheaper but costs its building: worth it for a store that lives as long as its
        # worker, not for one of many named spaces that a worker builds each time it takes one up.
        self.table_limit = table_limit
        # A forked child starts with nothing of its parent's: leases inherited by two processes would be
        # served twice.
        self._process = runtime.PerProcess(lambda: _ProcessState(self.lock_timeout, self._busy_error))

    def issue(self, kind: NumberKind, count: int = 1) -> Issued:
        process = self._process.get()
        leases = process.leases[kind]
        # A single number from the block being served: the typical request, without the housekeeping below.
        # (`permutation` is set once, under the lock, before any counter of this process is served.) Its
        # index comes from the indexes computed ahead a run of counters at a time (`Leases.take_index`).
        if count == 1 and leases.permutation is not None:
            with process.lock:
                index = leases.take_one()
            if index is not None:
                return Issued([self.spaces[kind].low + index])
        with process.lock:
            self._ready(process)
            permutation = self._permutation(process, leases, kind)
            self._collect_prefetch(leases)
            if leases.available < count:
                self._top_up(process, kind, leases, count)
            if count <= permutation.run_length:
                # From the runs computed ahead, as on the fast path: a small batch of its own would pay a
                # run's fixed cost for a few numbers.
                indexes, ranges = [leases.take_index() for _ in range(count)], []
            else:
                indexes, ranges = [], leases.take(count)
            if leases.wants_prefetch():
                # Fails only while the interpreter shuts down; the lease is then simply not taken early.
                with suppress(RuntimeError):
                    leases.prefetch = runtime.start_background(
                        f"{self.label}-lease", self._lease, process, kind, 1, self._next_size(kind, leases)
                    )
            finished, leases.finished = leases.finished, []
        if finished:
            with suppress(RuntimeError):
                runtime.start_background(f"{self.label}-close", self._close_finished, kind, finished)
        low = self.spaces[kind].low
        # The permutation is pure, so a large batch's runs are computed outside the lock.
        indexes.extend(index for start, stop in ranges for index in permutation.many(start, stop - start))
        return Issued([low + index for index in indexes])

    def prepare(self) -> None:
        """Loads the key and builds both permutations (their tables take a moment), as a process's first
        requests would; leases nothing."""
        process = self._process.get()
        with process.lock:
            self._ready(process)
            for kind in self.spaces:
                self._permutation(process, process.leases[kind], kind)

    def check_ready(self) -> None:
        self.prepare()  # the key, loaded and checked once per process
        self.counters.remaining(next(iter(self.spaces)))

    def prefill(self, kind: NumberKind, count: int) -> None:
        process = self._process.get()
        with process.lock:
            self._ready(process)
            self.counters.prefill(kind, count)

    def stats(self) -> dict[str, dict[str, int]]:
        process = self._process.get()
        for leases in process.leases.values():
            # A lease on its way is in the database's counter: count it as held once it is here, not as issued.
            future = leases.prefetch
            if future is not None:
                with suppress(Exception):
                    future.result(timeout=self.lock_timeout)
                with process.lock:
                    self._collect_prefetch(leases)
        # The counter and what this process holds, read together: a lease landing in between would count twice.
        with process.lock:
            rows = self.counters.counters()
            held = {kind: (process.leases[kind].available, process.leases[kind].served) for kind in self.spaces}
        result = {}
        for kind in self.spaces:
            counter, accounted, skipped = rows.get(kind, (0, 0, 0))
            held_here, served = held[kind]
            size = self.spaces[kind].size
            result[kind] = {
                "counter": counter,
                "issued": counter - held_here,
                "served_by_this_process": served,
                "held_by_this_process": held_here,
                "space_size": size,
                "remaining": size - counter + held_here,
                "skipped": skipped,
                "unaccounted": counter - accounted,
            }
        return result

    def release(self) -> None:
        """This process serves no more from this store (a named space dropped from its cache): its leases close,
        their unserved rest a known gap, as at a clean exit."""
        process = self._process.built()
        if process is None:
            return
        atexit.unregister(self._close_leases)
        with process.lock:
            self._close_leases(process)
            for leases in process.leases.values():
                # A request still holding this store leases anew rather than serve what is closed.
                leases.blocks.clear()
                leases.available = 0

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
            block = self._lease(process, kind, need, max(need, leases.lease_size or self.block_size))
            if block is not None:
                leases.add(block)
                return
            counter_remaining = self.counters.remaining(kind)
            leases.counter_exhausted = counter_remaining == 0
        # The space is used up only once no live worker holds any of it: the others' leases are theirs to
        # serve (never ours), and a retry that reaches them succeeds. A batch is served by one worker: at
        # most what one holder has (at most its open leases, whole) plus what the counter has left.
        elsewhere = self.counters.held_elsewhere(kind)
        if count == 1:
            if not elsewhere:
                raise SpaceExhaustedError("All possible numbers have been used.")
            raise HeldElsewhereError(HELD_ELSEWHERE_MESSAGE)
        largest = counter_remaining + max([leases.available, *elsewhere])
        if count > largest:
            raise InsufficientRemainingError(count, largest)
        raise HeldElsewhereError(HELD_ELSEWHERE_MESSAGE)

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
            tweak = f"{self.tweak}{kind}:{space.low}:{space.high}:{space.decimals}".encode()
            tables = space.size <= self.table_limit if self.table_limit else None
            leases.permutation = process.permutation_type(process.key, space.size, tweak, tables=tables)
        return leases.permutation

    # The counter database.

    def _next_size(self, kind: NumberKind, leases: Leases) -> int:
        """The size of the lease taken ahead now: twice the last one if that was asked for within GROW_WITHIN
        seconds (up to `largest_lease`), half of it after SHRINK_AFTER seconds (down to `block_size`)."""
        now = self.clock()
        size, lasted = leases.lease_size or self.block_size, now - leases.asked_at
        if lasted < GROW_WITHIN:
            size = min(size * 2, self.largest_lease[kind])
        elif lasted >= SHRINK_AFTER:
            size = max(size // 2, self.block_size)
        leases.lease_size, leases.asked_at = size, now
        return size

    def _lease(self, process: _ProcessState, kind: NumberKind, need: int, want: int) -> Block | None:
        """Leases at least `need` and at most `want` counters in one durable write (exactly `need` near the
        counter's end); None if fewer than `need` are left."""
        lease = self.counters.lease(kind, need, want, TAIL_BLOCKS * self.block_size)
        if lease is None:
            return None
        leases = process.leases[kind]
        leases.leased += lease.stop - lease.start
        leases.in_tail = lease.left <= TAIL_BLOCKS * self.block_size
        # The size only: counter values, with the key, are the numbers served.
        event(log, "lease_taken", stage=self.label, kind=kind, size=lease.stop - lease.start)
        if not process.exit_hook:
            atexit.register(self._close_leases, process)
            process.exit_hook = True
        return Block(lease.start, lease.stop)

    def _close_finished(self, kind: NumberKind, starts: list[int]) -> None:
        """Records that this process served its leases beginning at `starts` to their end. Until it is
        recorded, others count them as held by this process (a retry instead of `space_exhausted`)."""
        try:
            self.counters.close_leases(kind, starts)
        except StoreError as err:
            event(log, "lease_close_failed", logging.WARNING, stage=self.label, kind=kind, error=str(err))
            # A later request that finishes a block closes these too: an open lease keeps the others retrying.
            process = self._process.get()
            with process.lock:
                process.leases[kind].finished.extend(starts)

    def _close_leases(self, process: _ProcessState) -> None:
        """At a clean exit, records how much of this process's leases went unserved (the known gaps)."""
        if process is not self._process.built():
            return
        for leases in process.leases.values():
            # A lease on its way counts as leased once it is taken: wait for it (its failure is no gap).
            if leases.prefetch is not None:
                with suppress(Exception):
                    leases.prefetch.result(timeout=self.lock_timeout)
        unserved = {kind: (leases.leased, leases.served) for kind, leases in process.leases.items() if leases.leased}
        try:
            if unserved:
                self.counters.account(unserved)
            for leases in process.leases.values():
                leases.leased = leases.served = 0
        except StoreError as err:
            event(log, "account_failed", logging.WARNING, stage=self.label, error=str(err))

    # The key and the permutation.

    def _ready(self, process: _ProcessState) -> None:
        """Loads (or, with a new database, creates) the key and the permutation's record; once per process."""
        if process.key is None:
            process.key, process.permutation_type = self.counters.load_key_and_permutation()

    def _busy_error(self) -> StoreBusyError:
        return StoreBusyError.of(self.label)
