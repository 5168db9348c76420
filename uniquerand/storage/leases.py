"""/v5's leases: the backend that grants them (`Counters`), and in memory the counter blocks a process leased
for one kind, served in lease order, and when to lease the next block in the background. Not thread-safe: the
store serves them under its process lock (a lease taken in the background only adds to `leased` and sets
`in_tail`)."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

from uniquerand.permutation import Permutation

if TYPE_CHECKING:
    from uniquerand.numbers import NumberKind
    from uniquerand.storage.keyfile import PermutationType

# Share of the current block served before the next one is leased in the background.
PREFETCH_AT = 0.1


class Lease(NamedTuple):
    """Counters [start, stop) leased by one durable write, and how many the counter had left after it."""

    start: int
    stop: int
    left: int


@dataclass
class Block:
    """Counters [position, stop) of a lease that began at `start`, not yet served."""

    start: int
    stop: int
    position: int = field(init=False)

    def __post_init__(self) -> None:
        self.position = self.start


@dataclass
class Leases:
    """One kind's counters in this process: blocks in lease order, the first one being served."""

    blocks: deque[Block] = field(default_factory=deque)
    # Counters of `blocks` not yet served (kept as a count: this is asked on every request).
    available: int = 0
    prefetch: Future | None = None
    counter_exhausted: bool = False
    # The counter is near its end: leases take what a request needs, none is taken ahead.
    in_tail: bool = False
    # Where the blocks served to their end began (their leases are to be closed).
    finished: list[int] = field(default_factory=list)
    leased: int = 0
    served: int = 0
    # The size of the next lease taken ahead, and when the last one was asked for (`LeasedCounterStore`'s
    # growth: a worker that serves its leases fast takes larger ones, in fewer durable writes).
    lease_size: int = 0
    asked_at: float = float("-inf")
    permutation: Permutation | None = None
    # (start, [P(start), P(start + 1), ...]): the indexes of the block's next counters, computed together
    # (`permutation.run_length` of them): a permutation's cost per number falls with the run (one AES call
    # a round for all of it). One attribute, so that start and indexes are always replaced together.
    window: tuple[int, list[int]] = (0, [])

    def add(self, block: Block) -> None:
        self.blocks.append(block)
        self.available += block.stop - block.position

    def take(self, count: int) -> list[tuple[int, int]]:
        """`count` counters (at most `available`) as ranges [start, stop), in lease order."""
        self.available -= count
        self.served += count
        ranges = []
        while count:
            block = self.blocks[0]
            start = block.position
            block.position = stop = min(block.stop, start + count)
            ranges.append((start, stop))
            count -= stop - start
            if stop == block.stop:
                self.finished.append(self.blocks.popleft().start)
        return ranges

    def take_one(self) -> int | None:
        """The next counter's index P(counter), when serving it leaves nothing else to do: no lease in flight
        (done or not), no block to finish, no prefetch to start. Otherwise None, with nothing taken: the
        caller goes through the store's general path. Requires `permutation`."""
        if self.prefetch is not None or not self.blocks:
            return None
        block = self.blocks[0]
        counter = block.position
        if counter + 1 >= block.stop or (self._may_prefetch() and self._prefetch_due(block, counter + 1)):
            return None
        return self.take_index()

    def take_index(self) -> int:
        """The next counter's index P(counter), from the window, computed from this counter on when it does not
        cover it. At least one counter must be available. Requires `permutation`."""
        block = self.blocks[0]
        counter = block.position
        start, indexes = self.window
        if not 0 <= counter - start < len(indexes):
            run = min(self.permutation.run_length, block.stop - counter)
            start, indexes = self.window = (counter, self.permutation.many(counter, run))
        index = indexes[counter - start]
        block.position = counter + 1
        self.available -= 1
        self.served += 1
        if block.position == block.stop:
            self.finished.append(self.blocks.popleft().start)
        return index

    def wants_prefetch(self) -> bool:
        if not self._may_prefetch():
            return False
        return not self.blocks or self._prefetch_due(self.blocks[0], self.blocks[0].position)

    def _may_prefetch(self) -> bool:
        """No lease is on its way, the counter is not used up, and at most one block is left."""
        return self.prefetch is None and not (self.counter_exhausted or self.in_tail) and len(self.blocks) <= 1

    @staticmethod
    def _prefetch_due(block: Block, position: int) -> bool:
        """Whether a block served up to `position` is far enough along to lease the next one."""
        return position - block.start >= PREFETCH_AT * (block.stop - block.start)


class Counters(Protocol):
    """Where /v5's counters and the fingerprint of its key are kept: one per stage and backend."""

    def load_key_and_permutation(self) -> tuple[bytes, PermutationType]:
        """The key (created with a new database) and the permutation the database's counters are served with."""

    def lease(self, kind: NumberKind, need: int, want: int, tail: int) -> Lease | None:
        """At least `need`, at most `want` counters (exactly `need` once no more than `tail` are left), durably
        leased and recorded with this process as their holder; None if fewer than `need` are left."""

    def close_leases(self, kind: NumberKind, starts: list[int]) -> None:
        """This process has served every counter of its leases of `kind` that begin at `starts`."""

    def held_elsewhere(self, kind: NumberKind) -> list[int]:
        """Per other live process holding open leases of `kind`: at most how many counters it holds."""

    def remaining(self, kind: NumberKind) -> int:
        """Counter values not leased yet."""

    def prefill(self, kind: NumberKind, count: int) -> None:
        """Leases `count` counters that will never be served (for benchmarks)."""

    def counters(self) -> dict[str, tuple[int, int, int]]:
        """Per kind: (next, accounted, skipped); empty where nothing was ever recorded."""

    def account(self, unserved: dict[str, tuple[int, int]]) -> None:
        """Per kind: (leased, served) by a process that exits cleanly; its leases close."""
