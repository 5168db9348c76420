"""The stages the app serves side by side: each one's blueprint, its store, and how the index describes it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flask import Blueprint

from uniquerand.blueprints import v1, v2, v3, v4, v5
from uniquerand.logs import event
from uniquerand.numbers import NumberKind, NumberSpace
from uniquerand.storage.base import StoreError
from uniquerand.storage.json_file import JsonFileStore
from uniquerand.storage.leased import LeasedCounterStore
from uniquerand.storage.sharded import ShardedSqliteStore
from uniquerand.storage.sqlite import SqliteStore

log = logging.getLogger(__name__)
SHARD_NAME = {"type": "string", "pattern": "^(int|float)_shard_[0-9]+\\.db$", "examples": ["int_shard_1.db"]}
StoreFactory = Callable[[Path, dict[NumberKind, NumberSpace], dict], object]


@dataclass(frozen=True)
class Stage:
    name: str
    blueprint: Blueprint
    description: str
    store: str
    create_store: StoreFactory
    # How the API document (uniquerand/openapi.py) describes the stage; the defaults fit /v2 and later.
    lenient_type: bool = False  # `type` read as the simple server did: never a 422
    accepts_count: bool = True  # `?count=K` batches
    # JSON Schemas of extra properties of the 200 body of /random, for a single number and for a batch.
    extra_response_properties: dict = field(default_factory=dict)
    extra_batch_properties: dict = field(default_factory=dict)


def _json_store(name: str) -> StoreFactory:
    return lambda folder, spaces, config: JsonFileStore(
        folder, spaces, label=name, max_attempts=config["MAX_ATTEMPTS"], lock_timeout=config["LOCK_TIMEOUT"]
    )


def _sqlite_store(folder: Path, spaces: dict[NumberKind, NumberSpace], config: dict) -> SqliteStore:
    return SqliteStore(
        folder,
        spaces,
        label="v3",
        max_attempts=config["MAX_ATTEMPTS"],
        lock_timeout=config["LOCK_TIMEOUT"],
        settle_at=config["V3_SETTLE_AT"],
    )


def _leased_store(folder: Path, spaces: dict[NumberKind, NumberSpace], config: dict) -> LeasedCounterStore:
    return LeasedCounterStore(
        folder, spaces, label="v5", block_size=config["V5_BLOCK_SIZE"], lock_timeout=config["LOCK_TIMEOUT"]
    )


def _sharded_store(folder: Path, spaces: dict[NumberKind, NumberSpace], config: dict) -> ShardedSqliteStore:
    return ShardedSqliteStore(
        folder,
        spaces,
        label="v4",
        max_attempts=config["MAX_ATTEMPTS"],
        lock_timeout=config["LOCK_TIMEOUT"],
        shard_size=config["V4_SHARD_SIZE"],
        refill_at=config["V4_REFILL_AT"],
    )


STAGES: tuple[Stage, ...] = (
    Stage(
        "v1",
        v1.bp,
        "The simple server: random draws checked against a JSON file of used numbers; `type=float` read leniently.",
        "one JSON file (used_numbers.json) guarded by filelock",
        _json_store("v1"),
        lenient_type=True,
        accepts_count=False,
    ),
    Stage(
        "v2",
        v2.bp,
        "The documented-API stage: same store as /v1, with validated input (422 on a bad `type`).",
        "one JSON file (used_numbers.json) guarded by filelock",
        _json_store("v2"),
    ),
    Stage(
        "v3",
        v3.bp,
        "The SQLite stage: the PRIMARY KEY insert is the uniqueness check, WAL, synchronous=FULL.",
        "one SQLite database (numbers.db), a table per type",
        _sqlite_store,
    ),
    Stage(
        "v4",
        v4.bp,
        "The sharded stage: two SQLite pools per type, claimed by one UPDATE ... RETURNING, refilled in the "
        "background from a ledger.",
        "int_shard_{0,1}.db, float_shard_{0,1}.db and ledgers used_numbers_{int,float}.db",
        _sharded_store,
        extra_response_properties={"shard": SHARD_NAME},
        extra_batch_properties={"shards": {"type": "array", "items": SHARD_NAME, "minItems": 1}},
    ),
    Stage(
        "v5",
        v5.bp,
        "Unique by construction: a keyed Feistel permutation of a counter leased in blocks, served from memory.",
        "a key file (key, 0600) and one SQLite database (counters.db) of per-type counters",
        _leased_store,
    ),
)


def prepare_stores(app) -> None:
    """Builds at a worker's start what its first requests would otherwise wait for (gunicorn.conf.py's
    post_worker_init): /v5's key and permutation tables, /v4's empty or low pools. A store that cannot be
    prepared is left to answer its requests with the usual JSON error."""
    for name, store in app.extensions["uniquerand"]["stores"].items():
        prepare = getattr(store, "prepare", None)
        if prepare is None:
            continue
        try:
            prepare()
        except StoreError as err:
            event(log, "prepare_failed", logging.WARNING, stage=name, error=str(err))
        except Exception:  # never keep a worker from starting: its requests report the fault
            log.exception("prepare_failed", extra={"event": "prepare_failed", "fields": {"stage": name}})
