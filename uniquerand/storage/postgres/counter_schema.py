"""/v5's tables in PostgreSQL and the statements `PostgresCounters` runs on them: a counter row per space (the
stage's own "int" and "float", and "space:{name}" per named space), the leases with their holders, the
holders' heartbeats, and the named spaces' definitions."""

from uniquerand.storage.postgres.schema import Table

SCHEMA = [
    Table(
        "uniquerand_v5_counters",
        (
            ("kind", "text", "NOT NULL"),
            ("low", "bigint", "NOT NULL"),
            ("high", "bigint", "NOT NULL"),
            ("decimals", "integer", "NOT NULL"),
            ("next", "bigint", "NOT NULL DEFAULT 0"),
            ("lease_start", "bigint", "NOT NULL DEFAULT 0"),
            ("accounted", "bigint", "NOT NULL DEFAULT 0"),
            ("skipped", "bigint", "NOT NULL DEFAULT 0"),
        ),
        ("kind",),
    ),
    Table(
        "uniquerand_v5_leases",
        (
            ("kind", "text", "NOT NULL"),
            ("start", "bigint", "NOT NULL"),
            ("stop", "bigint", "NOT NULL"),
            ("holder", "text", "NOT NULL"),
            ("open", "boolean", "NOT NULL DEFAULT true"),
        ),
        ("kind", "start"),
    ),
    Table(
        "uniquerand_v5_holders",
        (("holder", "text", "NOT NULL"), ("heartbeat", "timestamp with time zone", "NOT NULL")),
        ("holder",),
    ),
    # Named spaces (`space_catalog`): each made with its counter row in one transaction.
    Table(
        "uniquerand_v5_spaces",
        (
            # Byte order, as SQLite's: the list pages by name on the primary key's index.
            ("name", "text", 'COLLATE "C" NOT NULL'),
            ("kind", "text", "NOT NULL"),
            ("low", "bigint", "NOT NULL"),
            ("high", "bigint", "NOT NULL"),
            ("decimals", "integer", "NOT NULL"),
            ("created", "timestamp with time zone", "NOT NULL DEFAULT now()"),
            ("retired", "boolean", "NOT NULL DEFAULT false"),
        ),
        ("name",),
    ),
]
OPEN_LEASES_INDEX = "CREATE INDEX uniquerand_v5_leases_open ON uniquerand_v5_leases (kind) WHERE open"
# SET reads the old row: lease_start is where this lease begins. Near the end (no more than `tail` left) a
# lease takes what its request needs and no more.
LEASE = """
UPDATE uniquerand_v5_counters
SET lease_start = next,
    next = next + CASE WHEN high - low + 1 - next <= %(tail)s THEN %(need)s ELSE GREATEST(%(need)s, %(want)s) END
WHERE kind = %(kind)s AND high - low + 1 - next >= %(need)s
  AND low = %(low)s AND high = %(high)s AND decimals = %(decimals)s
RETURNING lease_start, next, high - low + 1 - next
"""
RECORD_LEASE = "INSERT INTO uniquerand_v5_leases (kind, start, stop, holder) VALUES (%s, %s, %s, %s)"
HEARTBEAT = """
INSERT INTO uniquerand_v5_holders (holder, heartbeat) VALUES (%s, now())
ON CONFLICT (holder) DO UPDATE SET heartbeat = now()
"""
PREFILL = """
UPDATE uniquerand_v5_counters SET next = next + %(n)s, accounted = accounted + %(n)s
WHERE kind = %(kind)s AND high - low + 1 - next >= %(n)s
RETURNING next
"""
REMAINING = "SELECT high - low + 1 - next FROM uniquerand_v5_counters WHERE kind = %s"
HELD = """
SELECT l.holder, sum(l.stop - l.start), extract(epoch FROM now() - h.heartbeat)
FROM uniquerand_v5_leases l LEFT JOIN uniquerand_v5_holders h USING (holder)
WHERE l.kind = %s AND l.open AND l.holder != %s
GROUP BY l.holder, h.heartbeat
"""
