"""Helpers for the /v4 tests: the stage's files read directly, and process targets (module level, for spawn)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from uniquerand import create_app
from uniquerand.storage.contract import ShardsEmptyError

SHARDS = {"int": ["int_shard_0.db", "int_shard_1.db"], "float": ["float_shard_0.db", "float_shard_1.db"]}


def rows(path: Path, query: str) -> list[tuple]:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()


def shard_codes(folder: Path, name: str, used: int | None = None) -> list[int]:
    where = "" if used is None else f" WHERE used = {used}"
    return [code for (code,) in rows(folder / name, f"SELECT code FROM pool{where} ORDER BY id")]


def ledger_codes(folder: Path, kind: str) -> set[int]:
    return {code for (code,) in rows(folder / f"used_numbers_{kind}.db", "SELECT code FROM ledger")}


def assert_files_consistent(folder: Path, kind: str) -> None:
    """Ledger first: every pooled code is in the ledger, and no code is in two rows of any shard."""
    pooled = [code for name in SHARDS[kind] if (folder / name).exists() for code in shard_codes(folder, name)]
    assert len(pooled) == len(set(pooled)), "a code is in two shard rows"
    assert set(pooled) <= ledger_codes(folder, kind), "a pooled code is missing from the ledger"


def make_store(instance: str, settings: dict):
    return create_app({"INSTANCE_PATH": instance, **settings}).extensions["uniquerand"]["stores"]["v4"]


def claim_retrying(store, kind: str, count: int = 1, deadline: float = 20.0) -> list[int]:
    """Claims, waiting out the documented 503 while a background refill runs."""
    end = time.monotonic() + deadline
    while True:
        try:
            return store.issue(kind, count).codes
        except ShardsEmptyError:
            if time.monotonic() > end:
                raise
            time.sleep(0.02)


def claim_many(instance: str, settings: dict, claims: int, threads: int, out: str) -> None:
    """Process target: `claims` single claims from `threads` threads; the codes are written to `out`."""
    from concurrent.futures import ThreadPoolExecutor

    store = make_store(instance, settings)
    with ThreadPoolExecutor(threads) as pool:
        codes = [code for batch in pool.map(lambda _: claim_retrying(store, "int"), range(claims)) for code in batch]
    Path(out).write_text("\n".join(map(str, codes)))


def refill_shards(instance: str, settings: dict, names: list[str], target: int, start) -> None:
    """Process target: refills the named shards once every process is ready (`start`, a Barrier), waiting
    for another process's refill of the same shard."""
    store = make_store(instance, settings)
    start.wait(30)
    for name in names:
        assert store.refiller.refill(name, target, wait=30.0) is not None


def refill_forever(instance: str, settings: dict, target: int) -> None:
    """Process target: a long refill, to be killed mid-way."""
    make_store(instance, settings).refiller.refill("int_shard_0.db", target, wait=30.0)
