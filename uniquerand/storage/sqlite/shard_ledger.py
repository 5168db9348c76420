"""/v4's ledgers and pool rows as a refill writes them: numbers are drawn and reserved in a kind's ledger (only
codes new to the ledger count), then added to a shard; the ledger's PRIMARY KEY keeps every code out of every
other shard."""

from __future__ import annotations

import os
import sqlite3
import struct
import time
from collections.abc import Iterator

from uniquerand.numbers import NumberSpace
from uniquerand.storage.picking import pick_unused
from uniquerand.storage.sqlite.database import insert_new_codes, transaction
from uniquerand.storage.sqlite.shard_files import ledger_count

# Rows per refill transaction: amortises the fsync while keeping claims' waits for the write lock short.
REFILL_CHUNK = 20_000


def reserve(connection: sqlite3.Connection, space: NumberSpace, wanted: int, max_attempts: int) -> list[int]:
    """Up to `wanted` codes of `space` newly recorded in the ledger `connection` (committed before returning),
    fewer only when the space runs out. Codes are in the order they were drawn."""
    with transaction(connection):
        recorded = ledger_count(connection)
        wanted = min(wanted, space.size - recorded)
        codes = [] if wanted <= 0 else _pick(connection, space, wanted, recorded, max_attempts)
        connection.execute("UPDATE meta SET value = value + ? WHERE key = 'count'", (len(codes),))
        return codes


def _pick(
    connection: sqlite3.Connection, space: NumberSpace, count: int, recorded: int, max_attempts: int
) -> list[int]:
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
    return pick_unused(drawing, count, max_attempts, claim, lambda: recorded + new, used_ascending, claim_many)


# Both run as jobs of the shard's writer (a group commit), each in its own savepoint of its transaction.


def add_to_shard(connection: sqlite3.Connection, codes: list[int], used: int) -> None:
    connection.executemany("INSERT INTO pool (code, used) VALUES (?, ?)", ((code, used) for code in codes))


def record_refill(connection: sqlite3.Connection, added: int, seconds: float) -> None:
    connection.executemany(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        [("last_refill_at", time.time()), ("last_refill_added", added), ("last_refill_seconds", seconds)],
    )


class _BulkDrawingSpace:
    """`space` whose draws come from os.urandom in bulk: the same uniform CSPRNG draws as NumberSpace.draw
    (masking then rejection sampling), without a system call per number."""

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
        mask = space.mask
        while True:
            for (word,) in struct.iter_unpack("<Q", os.urandom(8 * 4096)):
                if (word & mask) < space.size:
                    yield space.low + (word & mask)
