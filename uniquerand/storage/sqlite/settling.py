"""/v3's settling: moving codes from a type's small `recent_<kind>` table into its large `issued_<kind>` one,
a slice of the space per transaction, in the background of a process's group-commit writer thread.

A code is in exactly one of the two tables at every commit: each slice moves with an INSERT and a DELETE in
one savepoint, and a plain INSERT fails on a code already settled rather than hiding a broken invariant.
Only settling may insert into `issued_<kind>` (see TRIGGERS): a release from before the recent tables,
which would insert there without looking at them, is refused instead of re-issuing a recent code.
"""

from __future__ import annotations

import sqlite3
import threading

from uniquerand.numbers import KINDS, NumberKind, NumberSpace
from uniquerand.storage.group_commit import GroupCommitter

# A transaction moves the recent codes of 1/SLICES of the space, so it touches about 1/SLICES of the settled
# table's pages, and other writers wait that long at most.
SLICES = 8
# Inserting into a settled table needs the 'settling' row of `meta`, which only a move holds (inside its own
# savepoint). `INSERT OR IGNORE` does not ignore RAISE(ABORT): an earlier release's claim fails closed.
TRIGGERS = "".join(
    f"""
CREATE TRIGGER IF NOT EXISTS issued_{kind}_by_settling_only BEFORE INSERT ON issued_{kind}
WHEN NOT EXISTS (SELECT 1 FROM meta WHERE key = 'settling')
BEGIN
    SELECT RAISE(ABORT, 'issued_{kind} is written by settling only: an earlier release must not serve this database');
END;
"""
    for kind in KINDS
)


class Settler:
    """One process's settling. Every 1/SLICES of `settle_at` codes it issued, it posts a step to `committer`'s
    writer thread; a step that finds `settle_at` recent codes of the type moves one slice and posts the next
    step, until half of them are left. Each step counts anew, so a step that never ran (its transaction
    failed) only ends the run early: the next look starts another."""

    def __init__(self, spaces: dict[NumberKind, NumberSpace], settle_at: int, committer: GroupCommitter) -> None:
        self.spaces = spaces
        self.settle_at = settle_at
        self.committer = committer
        self._lock = threading.Lock()
        self._issued_since_look = dict.fromkeys(KINDS, 0)
        self._next_slice = dict.fromkeys(KINDS, 0)  # used by the writer thread only

    def issued(self, kind: NumberKind, count: int) -> None:
        """Called after `count` codes of `kind` were committed: posts a look at the recent table when due."""
        with self._lock:
            self._issued_since_look[kind] += count
            if self._issued_since_look[kind] < max(1, self.settle_at // SLICES):
                return
            self._issued_since_look[kind] = 0
        self.committer.post(lambda connection: self._step(connection, kind, self.settle_at))

    def move_slice(self, connection: sqlite3.Connection, kind: NumberKind, index: int) -> None:
        """Moves the recent codes of slice `index` of the space; the outer slices reach past its ends, so codes
        of an earlier, wider space move too."""
        space = self.spaces[kind]
        low = space.low + space.size * index // SLICES if index else -(2**63)
        high = space.low + space.size * (index + 1) // SLICES - 1 if index < SLICES - 1 else 2**63 - 1
        where = "WHERE code BETWEEN ? AND ?"
        connection.execute("INSERT INTO meta (key, value) VALUES ('settling', 1)")
        connection.execute(f"INSERT INTO issued_{kind} (code) SELECT code FROM recent_{kind} {where}", (low, high))
        connection.execute(f"DELETE FROM recent_{kind} {where}", (low, high))
        connection.execute("DELETE FROM meta WHERE key = 'settling'")

    def _step(self, connection: sqlite3.Connection, kind: NumberKind, at_least: int) -> None:
        if connection.execute(f"SELECT COUNT(*) FROM recent_{kind}").fetchone()[0] < at_least:
            return
        index = self._next_slice[kind]
        self._next_slice[kind] = (index + 1) % SLICES
        self.move_slice(connection, kind, index)
        self.committer.post(lambda connection: self._step(connection, kind, self.settle_at // 2 + 1))
