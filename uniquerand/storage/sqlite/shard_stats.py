"""/v4's stats: per kind, what was issued and remains (from the shards and the ledger's count), and per shard
its level and last refill."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from uniquerand.numbers import KINDS, NumberSpace
from uniquerand.storage.sqlite.shard_files import ShardFiles, count_available, ledger_count, ledger_name, shard_names


def sharded_stats(
    files: ShardFiles, spaces: dict[str, NumberSpace], connection: Callable[[str], sqlite3.Connection]
) -> dict[str, dict]:
    result: dict[str, dict] = {}
    for kind in KINDS:
        shards = {name: _shard_stats(files, connection, name) for name in shard_names(kind)}
        with files.translated_errors("ledger"):
            ledger = ledger_count(connection(ledger_name(kind)))
        served = sum(shard["served"] for shard in shards.values())
        available = sum(shard["available"] for shard in shards.values())
        size = spaces[kind].size
        result[kind] = {
            "issued": served,
            "space_size": size,
            "remaining": size - ledger + available,
            "ledger": ledger,
            "shards": shards,
        }
    return result


def _shard_stats(files: ShardFiles, connection: Callable[[str], sqlite3.Connection], name: str) -> dict:
    with files.translated_errors(name):
        shard = connection(name)
        available = count_available(shard)
        rows = shard.execute("SELECT max(id) FROM pool").fetchone()[0] or 0
        meta = dict(shard.execute("SELECT key, value FROM meta"))
    with files.refill_locks([name], wait=0.0) as free:
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
