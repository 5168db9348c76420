"""/v3's settling: moving codes from a type's small `recent_<kind>` table into its large `issued_<kind>` one,
a slice of the space per transaction, in the background of a process's group-commit writer thread.

A code is in exactly one of the two tables at every commit: each slice moves with an INSERT and a DELETE in
one transaction, and a plain INSERT fails on a code already settled rather than hiding a broken invariant.
"""

from __future__ import annotations

import sqlite3
import threading

from uniquerand.numbers import KINDS, NumberKind, NumberSpace
from uniquerand.storage.group_commit import GroupCommitter

# A transaction moves the recent codes of 1/SLICES of the space, so it touches about 1/SLICES of the settled
# table's pages, and other writers wait that long at most.
SLICES = 8


class Settler:
    """One process's settling: when to look (every 1/SLICES of `settle_at` codes it issued) and the round it
    runs (every slice once, started when a type has `settle_at` recent codes). Its jobs run in `committer`'s
    writer thread, one slice per transaction."""

    def __init__(self, spaces: dict[NumberKind, NumberSpace], settle_at: int, committer: GroupCommitter) -> None:
        self.spaces = spaces
        self.settle_at = settle_at
        self.committer = committer
        self._lock = threading.Lock()
        self._issued_since_check = dict.fromkeys(KINDS, 0)
        # Used by the writer thread only.
        self._next_slice = dict.fromkeys(KINDS, 0)
        self._slices_left = dict.fromkeys(KINDS, 0)

    def issued(self, kind: NumberKind, count: int) -> None:
        """Called after `count` codes of `kind` were committed: posts a look at the recent table when due."""
        with self._lock:
            self._issued_since_check[kind] += count
            if self._issued_since_check[kind] < max(1, self.settle_at // SLICES):
                return
            self._issued_since_check[kind] = 0
        self.committer.post(lambda connection: self._start_round(connection, kind))

    def settle_all(self, connection: sqlite3.Connection, kind: NumberKind) -> None:
        """Moves every recent code of `kind` now, in the caller's transaction."""
        for index in range(SLICES):
            self._move_slice(connection, kind, index)

    def _start_round(self, connection: sqlite3.Connection, kind: NumberKind) -> None:
        """Starts a round unless one runs or the recent table holds fewer than `settle_at` codes (another
        process may have settled them meanwhile)."""
        if self._slices_left[kind]:
            return
        if connection.execute(f"SELECT COUNT(*) FROM recent_{kind}").fetchone()[0] >= self.settle_at:
            self._slices_left[kind] = SLICES
            self._next_round_slice(connection, kind)

    def _next_round_slice(self, connection: sqlite3.Connection, kind: NumberKind) -> None:
        """One slice of the round; the next one is posted first, so a failed move (logged by the committer,
        its codes left in the recent table) does not end the round."""
        index = self._next_slice[kind]
        self._next_slice[kind] = (index + 1) % SLICES
        self._slices_left[kind] -= 1
        if self._slices_left[kind]:
            self.committer.post(lambda connection: self._next_round_slice(connection, kind))
        self._move_slice(connection, kind, index)

    def _move_slice(self, connection: sqlite3.Connection, kind: NumberKind, index: int) -> None:
        """Moves the recent codes of slice `index` of the space; the outer slices reach past its ends, so codes
        of an earlier, wider space move too."""
        space = self.spaces[kind]
        low = space.low + space.size * index // SLICES if index else -(2**63)
        high = space.low + space.size * (index + 1) // SLICES - 1 if index < SLICES - 1 else 2**63 - 1
        where = "WHERE code BETWEEN ? AND ?"
        connection.execute(f"INSERT INTO issued_{kind} (code) SELECT code FROM recent_{kind} {where}", (low, high))
        connection.execute(f"DELETE FROM recent_{kind} {where}", (low, high))
