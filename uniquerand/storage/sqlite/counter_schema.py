"""/v5's tables in counters.db and the statements `SqliteCounters` runs on them: a counter row per space (the
stage's own "int" and "float", and "space:{name}" per named space), the leases with their holders, and the
named spaces' definitions."""

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
CREATE TABLE IF NOT EXISTS leases (
    kind TEXT NOT NULL,
    start INTEGER NOT NULL,
    stop INTEGER NOT NULL,
    holder TEXT NOT NULL,
    open INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (kind, start)
);
CREATE INDEX IF NOT EXISTS leases_open ON leases (kind) WHERE open = 1;
CREATE TABLE IF NOT EXISTS spaces (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    low INTEGER NOT NULL,
    high INTEGER NOT NULL,
    decimals INTEGER NOT NULL,
    created TEXT NOT NULL,
    retired INTEGER NOT NULL DEFAULT 0
);
"""
# `next` is the high-water mark: every counter below it belongs to a lease (or a prefill). SET reads
# the old row, so lease_start is where this lease begins. `accounted` counts leases closed cleanly
# (and prefills), `skipped` their counters never served. Once no more than :tail counters are left, a lease
# takes what its request needs and no more, so that little is held unserved when the counter runs out.
LEASE = """
UPDATE counters
SET lease_start = next,
    next = next + CASE WHEN high - low + 1 - next <= :tail THEN :need ELSE max(:need, :want) END
WHERE kind = :kind AND high - low + 1 - next >= :need
  AND low = :low AND high = :high AND decimals = :decimals
RETURNING lease_start, next, high - low + 1 - next
"""
# Each lease is recorded with its holder, open while the holder may still serve from it.
RECORD_LEASE = "INSERT INTO leases (kind, start, stop, holder) VALUES (?, ?, ?, ?)"


PREFILL = """
UPDATE counters SET next = next + :n, accounted = accounted + :n
WHERE kind = :kind AND high - low + 1 - next >= :n AND low = :low AND high = :high AND decimals = :decimals
RETURNING next
"""
