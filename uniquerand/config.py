"""Default settings and their validation. Every key can be set as an `UNIQUERAND_<KEY>` variable."""

from __future__ import annotations

import difflib
import os
import sqlite3
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from uniquerand.numbers import FLOAT_STEPS_LIMIT, JSON_SAFE_LIMIT

DEFAULTS: dict[str, Any] = {
    "INT_MIN": 0,
    "INT_MAX": 4294967295,
    "FLOAT_MIN": 0,
    "FLOAT_MAX": 100000000,
    "FLOAT_DECIMALS": 6,
    # Random draws per number before falling back to an exact pick among the free numbers.
    "MAX_ATTEMPTS": 100,
    # Largest `count` a batch request may ask for.
    "MAX_COUNT": 1000,
    # Seconds a request waits for a store's lock before answering 503 with Retry-After.
    "LOCK_TIMEOUT": 5.0,
    # Seconds a client is told to wait in Retry-After.
    "RETRY_AFTER": 1,
    # Level of the structured event log on stderr: DEBUG, INFO, WARNING or ERROR.
    "LOG_LEVEL": "INFO",
    # /v3: codes in a type's small "recent" table that start moving them into the large settled one.
    "V3_SETTLE_AT": 100_000,
    # Counter values /v5 leases per durable write; a crash skips at most the unserved rest of a lease.
    "V5_BLOCK_SIZE": 1000,
    # How many times V5_BLOCK_SIZE a lease may grow to for a worker that serves fast (fewer durable writes
    # for large batches; a crash may skip up to three of the largest leases per worker and type). 1: fixed.
    "V5_LEASE_GROWTH": 16,
    # /v4: available numbers each shard is filled up to, and the low-water mark below which a shard is
    # refilled in the background (None: half the shard size).
    "V4_SHARD_SIZE": 10000,
    "V4_REFILL_AT": None,
    # A PostgreSQL URI (libpq's syntax and parameters): when set, /v3, /v4 and /v5 keep all their state in
    # that database, which several servers may share. Empty: SQLite files in the instance folder.
    "DATABASE_URL": "",
    # Connections each worker process may open to it (a deployment needs hosts x workers x this many).
    "DATABASE_POOL_SIZE": 8,
    # A database with asynchronous standbys (one promoted after a crash may lack served numbers): "refuse" to
    # serve from it, or "warn" and serve.
    "ASYNC_REPLICATION": "refuse",
    # What DATABASE_URL reaches: "none", PostgreSQL itself; "pgbouncer", a pooler that may lend each
    # transaction another server connection, and refuses or drops the settings a client gives at connection
    # start: no session state is then used (no connection options, no prepared statements).
    "DATABASE_POOLER": "none",
    # A file of access-token hashes (`flask tokens create NAME` writes it; relative to INSTANCE_PATH). When
    # set, /vN/random and /vN/stats need `Authorization: Bearer <token>`. Empty: every path is open.
    "TOKENS_FILE": "",
    # Whether /metrics needs a token too (requires TOKENS_FILE).
    "METRICS_REQUIRE_TOKEN": False,
    # Seconds a /v5 draw's answer is kept for a retry with the same Idempotency-Key (a day).
    "IDEMPOTENCY_TTL": 86400,
    # The Ed25519 key file that signs /v5's signed draws (relative to INSTANCE_PATH); made at first use. Empty:
    # v5/signing-key.json. Every host of one database needs a copy of the same file.
    "SIGNING_KEY_FILE": "",
    # /v5's key file (relative to INSTANCE_PATH); made at first use. Empty: v5/key. A path lets hosts mount
    # the one key every host of a database must share from a secret store.
    "V5_KEY_FILE": "",
}
PREFIX = "UNIQUERAND_"
# Read by gunicorn.conf.py, not by the app.
SERVER_SETTINGS = ("BIND", "WORKERS", "WORKER_CLASS", "THREADS")
# RETURNING (3.35) is what /v3, /v4 and /v5 claim and lease with.
SQLITE_MINIMUM = (3, 35, 0)


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names it."""


def _integer(config: dict, key: str, minimum: int | None = None, maximum: int | None = None) -> int:
    value = config[key]
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigError(f"{key} must be an integer, got {config[key]!r}.") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {value!r}.")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key} must be at least {minimum}, got {value}.")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{key} must be at most {maximum}, got {value}.")
    return value


def _positive_number(config: dict, key: str) -> float:
    value = config[key]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number, got {value!r}.") from None
    if isinstance(value, bool) or not 0 < number <= 3600:
        raise ConfigError(f"{key} must be a positive number of seconds, at most 3600, got {value!r}.")
    return number


def _decimal(config: dict, key: str) -> Decimal:
    value = config[key]
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be a number, got {value!r}.")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ConfigError(f"{key} must be a number, got {value!r}.") from None
    if not number.is_finite():
        raise ConfigError(f"{key} must be a finite number, got {value!r}.")
    return number


def _boolean(config: dict, key: str) -> bool:
    value = config[key]
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{key} must be true or false, got {value!r}.")


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuses an `UNIQUERAND_*` variable that names no setting (a typo would otherwise be ignored, and the
    server run on a default the operator meant to change), naming the nearest known one."""
    known = [*DEFAULTS, "INSTANCE_PATH", *SERVER_SETTINGS]
    for name in sorted(environ):
        if name.startswith(PREFIX) and name[len(PREFIX) :] not in known:
            nearest = difflib.get_close_matches(name[len(PREFIX) :], known, n=1)
            hint = f" Did you mean {PREFIX}{nearest[0]}?" if nearest else ""
            raise ConfigError(f"{name} is not a uniquerand setting.{hint} The settings are listed in the README.")


def check_sqlite(version: str = sqlite3.sqlite_version) -> None:
    """Refuses an SQLite older than the stages' statements need, before any store is opened."""
    found = tuple(int(part) for part in version.split(".")[:3])
    if found < SQLITE_MINIMUM:
        minimum = ".".join(map(str, SQLITE_MINIMUM))
        raise ConfigError(
            f"This Python's sqlite3 is SQLite {version}; uniquerand needs {minimum} or newer (for RETURNING). "
            "Use a Python built with a newer SQLite."
        )


def validate(config: dict) -> None:
    """Normalises the settings in place; raises ConfigError naming the first bad one.

    Refuses empty ranges and ranges whose numbers would not survive a JSON round trip (beyond 2**53).
    """
    config["INSTANCE_PATH"] = str(Path(str(config["INSTANCE_PATH"])).expanduser().resolve())
    low = config["INT_MIN"] = _integer(config, "INT_MIN", -JSON_SAFE_LIMIT, JSON_SAFE_LIMIT)
    high = config["INT_MAX"] = _integer(config, "INT_MAX", -JSON_SAFE_LIMIT, JSON_SAFE_LIMIT)
    if high < low:
        raise ConfigError(f"INT_MAX ({high}) must not be below INT_MIN ({low}): the int range is empty.")

    decimals = config["FLOAT_DECIMALS"] = _integer(config, "FLOAT_DECIMALS", 0, 15)
    scale = Decimal(10) ** decimals
    bounds = {}
    for key in ("FLOAT_MIN", "FLOAT_MAX"):
        steps = _decimal(config, key) * scale
        if steps != steps.to_integral_value():
            raise ConfigError(f"{key} must lie on the grid of 10^-{decimals} (FLOAT_DECIMALS).")
        if abs(steps) > FLOAT_STEPS_LIMIT:
            raise ConfigError(
                f"{key} times 10^FLOAT_DECIMALS must stay within +-2^52 so that every float on the "
                "grid survives JSON as a distinct double; lower the bound or FLOAT_DECIMALS."
            )
        bounds[key] = int(steps)
    if bounds["FLOAT_MAX"] <= bounds["FLOAT_MIN"]:
        raise ConfigError("FLOAT_MAX must be above FLOAT_MIN: the float range [FLOAT_MIN, FLOAT_MAX) is empty.")
    config["FLOAT_MIN_STEPS"], config["FLOAT_MAX_STEPS"] = bounds["FLOAT_MIN"], bounds["FLOAT_MAX"]

    config["MAX_ATTEMPTS"] = _integer(config, "MAX_ATTEMPTS", 1, 1_000_000)
    config["MAX_COUNT"] = _integer(config, "MAX_COUNT", 1, 1_000_000)
    config["LOCK_TIMEOUT"] = _positive_number(config, "LOCK_TIMEOUT")
    config["RETRY_AFTER"] = _integer(config, "RETRY_AFTER", 1, 3600)
    level = str(config["LOG_LEVEL"]).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, got {config['LOG_LEVEL']!r}.")
    config["LOG_LEVEL"] = level
    config["V3_SETTLE_AT"] = _integer(config, "V3_SETTLE_AT", 1, 100_000_000)
    config["V5_BLOCK_SIZE"] = _integer(config, "V5_BLOCK_SIZE", 1, 1_000_000)
    config["V5_LEASE_GROWTH"] = _integer(config, "V5_LEASE_GROWTH", 1, 1024)
    config["IDEMPOTENCY_TTL"] = _integer(config, "IDEMPOTENCY_TTL", 1, 30 * 86400)
    _validate_v4(config)
    _validate_database(config)
    _validate_tokens(config)
    for key, default in (("SIGNING_KEY_FILE", "v5/signing-key.json"), ("V5_KEY_FILE", "v5/key")):
        config[key] = _in_instance(config, str(config[key] or "").strip() or default)


def _validate_v4(config: dict) -> None:
    size = config["V4_SHARD_SIZE"] = _integer(config, "V4_SHARD_SIZE", 1, 100_000_000)
    if config["V4_REFILL_AT"] is None or config["V4_REFILL_AT"] == "":
        config["V4_REFILL_AT"] = size // 2
    else:
        config["V4_REFILL_AT"] = _integer(config, "V4_REFILL_AT", 0, size)
    if size < config["MAX_COUNT"]:
        # A batch is claimed from the shards' content; shards smaller than a batch could never serve it.
        raise ConfigError(f"V4_SHARD_SIZE ({size}) must be at least MAX_COUNT ({config['MAX_COUNT']}).")


def _validate_database(config: dict) -> None:
    url = config["DATABASE_URL"] = str(config["DATABASE_URL"] or "").strip()
    config["DATABASE_POOL_SIZE"] = _integer(config, "DATABASE_POOL_SIZE", 2, 1000)
    policy = config["ASYNC_REPLICATION"] = str(config["ASYNC_REPLICATION"] or "").strip().lower()
    if policy not in ("refuse", "warn"):
        raise ConfigError(f"ASYNC_REPLICATION must be refuse or warn, got {config['ASYNC_REPLICATION']!r}.")
    pooler = config["DATABASE_POOLER"] = str(config["DATABASE_POOLER"] or "").strip().lower()
    if pooler not in ("none", "pgbouncer"):
        raise ConfigError(f"DATABASE_POOLER must be none or pgbouncer, got {config['DATABASE_POOLER']!r}.")
    if not url:
        return
    # Checked without the driver, which must not be imported before a gevent worker patched itself.
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not (parts.netloc or parts.query):
        raise ConfigError(
            "DATABASE_URL must be a PostgreSQL URI such as postgresql://user@host:5432/dbname, "
            f"got one starting with {url.split(':', 1)[0]!r}."
        )


def _in_instance(config: dict, path: str) -> str:
    """`path`, relative to INSTANCE_PATH unless absolute. Symlinks are not resolved: the server follows one on
    every read (a secret swapped under it)."""
    return os.path.abspath(Path(config["INSTANCE_PATH"]) / Path(path).expanduser())


def _validate_tokens(config: dict) -> None:
    path = str(config["TOKENS_FILE"] or "").strip()
    if path:
        # Beside the data by default, so that `flask tokens` and the server agree wherever they were started.
        path = _in_instance(config, path)
    config["TOKENS_FILE"] = path
    config["METRICS_REQUIRE_TOKEN"] = _boolean(config, "METRICS_REQUIRE_TOKEN")
    if config["METRICS_REQUIRE_TOKEN"] and not path:
        raise ConfigError("METRICS_REQUIRE_TOKEN needs TOKENS_FILE: set UNIQUERAND_TOKENS_FILE to a tokens file.")
