"""The stages the app serves side by side: each one's settings, its store, and how the index describes it.

A stage's settings drive both its HTTP behaviour (`blueprints.stage`) and its API document (`openapi`).
Adding a stage, or serving one from another backend, is a change to `build_stages` alone."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from uniquerand.logs import event
from uniquerand.numbers import NumberKind, NumberSpace
from uniquerand.signing import DrawSigner, KeyFile
from uniquerand.storage.contract import Store, StoreError, StoreSettings
from uniquerand.storage.json_file import JsonFileStore
from uniquerand.storage.leased import LeasedCounterStore
from uniquerand.storage.postgres.counters import PostgresCounters
from uniquerand.storage.postgres.database import Database
from uniquerand.storage.postgres.draws import postgres_draws
from uniquerand.storage.postgres.issued import PostgresStore
from uniquerand.storage.postgres.replies import postgres_replies
from uniquerand.storage.postgres.sharded import ShardedPostgresStore
from uniquerand.storage.postgres.space_catalog import PostgresSpaceCatalog
from uniquerand.storage.replies import ReplyStore
from uniquerand.storage.spaces import NamedSpaces, SpaceCatalog, SpaceRecord
from uniquerand.storage.sqlite.counters import SqliteCounters
from uniquerand.storage.sqlite.draws import sqlite_draws
from uniquerand.storage.sqlite.issued import SqliteStore
from uniquerand.storage.sqlite.replies import sqlite_replies
from uniquerand.storage.sqlite.sharded import ShardedSqliteStore
from uniquerand.storage.sqlite.space_catalog import SqliteSpaceCatalog

log = logging.getLogger(__name__)
# The named spaces whose stores (permutation tables, leases) a worker keeps; one dropped closes its leases.
SPACE_CACHE_SIZE = 1024
# Named spaces of up to this many numbers get round tables (about a thousand entries a round, built in about
# a millisecond); larger ones compute their rounds a run of numbers at a time (see AesRadixPermutation).
SPACE_TABLE_LIMIT = 2**20
SHARD_NAME = {"type": "string", "pattern": "^(int|float)_shard_[0-9]+\\.db$", "examples": ["int_shard_1.db"]}


@dataclass(frozen=True)
class Sources:
    """How a stage names where each number came from (`Issued.sources`): the field of a single number's
    body, the field of a batch's, and the JSON Schema of one name."""

    single: str
    batch: str
    schema: dict[str, Any]


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    store_description: str
    store: Store
    # `type` read as the simple server did: `float` (any case) means float, anything else int; never a 422.
    lenient_type: bool = False
    # `?count=K` batches; without it the stage answers one number whatever the query says.
    accepts_count: bool = True
    sources: Sources | None = None
    # /v5's named spaces (`PUT /v5/spaces/{name}`), where the stage's backend keeps them.
    named_spaces: NamedSpaces | None = None
    # /v5's answers recorded for retries with an Idempotency-Key, where the stage's backend keeps them.
    replies: ReplyStore | None = None
    # /v5's signed draws of named spaces (`?signed=true`), their serials and key set.
    signer: DrawSigner | None = None

    @property
    def extra_response_properties(self) -> dict[str, Any]:
        """JSON Schemas of the 200 body's properties beyond `number`, for a single number."""
        return {self.sources.single: self.sources.schema} if self.sources else {}

    @property
    def extra_batch_properties(self) -> dict[str, Any]:
        """The same for a batch, beyond `numbers`."""
        if not self.sources:
            return {}
        return {self.sources.batch: {"type": "array", "items": self.sources.schema, "minItems": 1}}


def build_stages(instance: Path, spaces: dict[NumberKind, NumberSpace], config: dict) -> tuple[Stage, ...]:
    """Every stage with its store, each keeping its files in its own folder of `instance`; with a
    DATABASE_URL, /v3, /v4 and /v5 keep their state in that PostgreSQL database instead."""

    def settings(name: str) -> StoreSettings:
        return StoreSettings(instance / name, spaces, name, config["LOCK_TIMEOUT"], config["MAX_ATTEMPTS"])

    json_description = "one JSON file (used_numbers.json) guarded by filelock"
    stages = (
        Stage(
            "v1",
            "The simple server: random draws checked against a JSON file of used numbers; `type=float` read leniently.",
            json_description,
            JsonFileStore(settings("v1")),
            lenient_type=True,
            accepts_count=False,
        ),
        Stage(
            "v2",
            "The documented-API stage: same store as /v1, with validated input (422 on a bad `type`).",
            json_description,
            JsonFileStore(settings("v2")),
        ),
    )
    if config["DATABASE_URL"]:
        return (*stages, *_postgres_stages(settings, config))
    return (
        *stages,
        Stage(
            "v3",
            "The SQLite stage: the PRIMARY KEY insert is the uniqueness check, WAL, synchronous=FULL.",
            "one SQLite database (numbers.db), two tables per type: the recent numbers and the settled ones",
            SqliteStore(settings("v3"), settle_at=config["V3_SETTLE_AT"]),
        ),
        Stage(
            "v4",
            "The sharded stage: two SQLite pools per type, claimed by one UPDATE ... RETURNING, refilled in the "
            "background from a ledger.",
            "int_shard_{0,1}.db, float_shard_{0,1}.db and ledgers used_numbers_{int,float}.db",
            ShardedSqliteStore(settings("v4"), shard_size=config["V4_SHARD_SIZE"], refill_at=config["V4_REFILL_AT"]),
            sources=Sources("shard", "shards", SHARD_NAME),
        ),
        _sqlite_v5(settings("v5"), config),
    )


def _sqlite_v5(settings: StoreSettings, config: dict) -> Stage:
    """/v5 on SQLite, its own two spaces and its named ones counted in one counters.db under one key."""
    counters = SqliteCounters(settings, Path(config["V5_KEY_FILE"]))
    return Stage(
        "v5",
        "Unique by construction: a keyed Feistel permutation of a counter leased in blocks, served from memory; "
        "named spaces of their own range under /v5/spaces.",
        "a key file (key, 0600) and SQLite databases: counters.db (counters, named spaces, leases), replies.db "
        "(recorded answers), draws.db (signed draws; their key is signing-key.json, 0600)",
        LeasedCounterStore(settings, counters, block_size=config["V5_BLOCK_SIZE"], growth=config["V5_LEASE_GROWTH"]),
        named_spaces=_named_spaces(settings, SqliteSpaceCatalog(counters), config),
        replies=sqlite_replies(settings.folder, settings.label, settings.lock_timeout, *_reply_times(config)),
        signer=DrawSigner(
            KeyFile(Path(config["SIGNING_KEY_FILE"])),
            sqlite_draws(settings.folder, settings.label, settings.lock_timeout),
        ),
    )


def _reply_times(config: dict) -> tuple[float, float]:
    """How long an answer is kept, and how old a claim must be before a retry takes it over: older than any
    request that claims, issues and records, each of its waits LOCK_TIMEOUT at most (a signed draw's five:
    the claim, a lease, the key's publication, the draw's record, the answer's record)."""
    return float(config["IDEMPOTENCY_TTL"]), 6 * config["LOCK_TIMEOUT"]


def _named_spaces(settings: StoreSettings, catalog: SpaceCatalog, config: dict) -> NamedSpaces:
    """/v5's named spaces in `catalog`, each served by a store of its own on the stage's counters and key."""

    def store_of(record: SpaceRecord) -> LeasedCounterStore:
        space_settings = replace(
            settings, spaces={record.space.kind: record.space}, label=f"{settings.label}/spaces/{record.name}"
        )
        # The name in the tweak: two spaces of one range serve different sequences.
        return LeasedCounterStore(
            space_settings,
            catalog.counters(record),
            block_size=config["V5_BLOCK_SIZE"],
            growth=config["V5_LEASE_GROWTH"],
            tweak=f"{record.row}:",
            table_limit=SPACE_TABLE_LIMIT,
        )

    return NamedSpaces(catalog, store_of, cache_size=SPACE_CACHE_SIZE)


def _postgres_stages(settings: Callable[[str], StoreSettings], config: dict) -> tuple[Stage, ...]:
    """/v3, /v4 and /v5 on the PostgreSQL database of DATABASE_URL, which every server pointed at it shares."""
    database = Database(
        config["DATABASE_URL"],
        pool_size=config["DATABASE_POOL_SIZE"],
        timeout=config["LOCK_TIMEOUT"],
        async_replication=config["ASYNC_REPLICATION"],
        pooler=config["DATABASE_POOLER"],
    )
    return (
        Stage(
            "v3",
            "The SQL stage on PostgreSQL: the PRIMARY KEY insert (ON CONFLICT DO NOTHING RETURNING) is the "
            "uniqueness check, shared by every server on the database.",
            "PostgreSQL tables uniquerand_v3_int and uniquerand_v3_float",
            PostgresStore(settings("v3"), database),
        ),
        Stage(
            "v4",
            "The sharded stage on PostgreSQL: two pools per type, claimed by DELETE ... FOR UPDATE SKIP LOCKED "
            "RETURNING, refilled in the background from a ledger.",
            "PostgreSQL tables uniquerand_v4_pool_{int,float}, uniquerand_v4_ledger_{int,float}, uniquerand_v4_shards",
            ShardedPostgresStore(
                settings("v4"), database, shard_size=config["V4_SHARD_SIZE"], refill_at=config["V4_REFILL_AT"]
            ),
            sources=Sources("shard", "shards", SHARD_NAME),
        ),
        _postgres_v5(settings("v5"), database, config),
    )


def _postgres_v5(settings: StoreSettings, database: Database, config: dict) -> Stage:
    """/v5 on PostgreSQL: its own two counters and its named spaces' in one table, which every host shares."""
    counters = PostgresCounters(settings, database, Path(config["V5_KEY_FILE"]))
    return Stage(
        "v5",
        "Unique by construction: a keyed Feistel permutation of a counter leased in blocks, served from memory; "
        "named spaces of their own range under /v5/spaces, shared by every server on the database.",
        "a key file (key, 0600, the same on every server) and the PostgreSQL tables uniquerand_v5_counters, "
        "uniquerand_v5_spaces, uniquerand_v5_leases, uniquerand_v5_holders, uniquerand_v5_replies, "
        "uniquerand_v5_draw_serials, uniquerand_v5_draws and uniquerand_v5_signing_keys",
        LeasedCounterStore(settings, counters, block_size=config["V5_BLOCK_SIZE"], growth=config["V5_LEASE_GROWTH"]),
        named_spaces=_named_spaces(settings, PostgresSpaceCatalog(counters), config),
        replies=postgres_replies(database, settings.label, settings.lock_timeout, *_reply_times(config)),
        signer=DrawSigner(
            KeyFile(Path(config["SIGNING_KEY_FILE"])), postgres_draws(database, settings.label, settings.lock_timeout)
        ),
    )


def prepare_stores(app) -> None:
    """Builds at a worker's start what its first requests would otherwise wait for (gunicorn.conf.py's
    post_worker_init): /v5's key and permutation tables, /v4's empty or low pools. A store that cannot be
    prepared is left to answer its requests with the usual JSON error."""
    for stage in app.extensions["uniquerand"]["stages"]:
        try:
            stage.store.prepare()
        except StoreError as err:
            event(log, "prepare_failed", logging.WARNING, stage=stage.name, error=str(err))
        except Exception:  # never keep a worker from starting: its requests report the fault
            log.exception("prepare_failed", extra={"event": "prepare_failed", "fields": {"stage": stage.name}})
