"""A real PostgreSQL server for the tests, started by the first test that needs one: what the PostgreSQL stores
promise (locks, SKIP LOCKED, commits that survive a crash) only shows on a real server, so no mocks.

The suite starts a throwaway cluster from the Debian binaries on a free port of 127.0.0.1, or uses the server
TEST_POSTGRES_URL names. Spawned children and gunicorns reach the same server through TEST_POSTGRES_SESSION.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from tests.support import GunicornServer
from uniquerand.bench import cluster as clusters
from uniquerand.bench.cluster import SETTINGS, ClusterError

__all__ = [
    "BASE",
    "EXTERNAL_URL",
    "SESSION",
    "SETTINGS",
    "SMALL_SPACES",
    "Cluster",
    "ClusterError",
    "cluster",
    "database_for",
    "give_key",
    "require_local_cluster",
    "start",
    "start_pair",
]

EXTERNAL_URL = "TEST_POSTGRES_URL"
# The session's server, published for child processes. Not UNIQUERAND_*: conftest.py deletes those.
SESSION = "TEST_POSTGRES_SESSION"
BASE: Path = clusters.default_base("test")


# 3000 ints and 3000 floats: a lost update repeats a number at once. Small shards and leases, so that /v4
# refills and /v5 leases all through a test's load.
SMALL_SPACES = {
    "INT_MIN": 1,
    "INT_MAX": 3000,
    "FLOAT_MIN": 0,
    "FLOAT_MAX": 3,
    "FLOAT_DECIMALS": 3,
    "MAX_COUNT": 50,
    "V4_SHARD_SIZE": 200,
    "V4_REFILL_AT": 100,
    "V5_BLOCK_SIZE": 20,
}


class Cluster(clusters.Cluster):
    """The suite's server: a cluster this process creates below BASE (`Cluster()`, then `start()`), or a server
    reached by URL (`Cluster(url)`), on which it only creates and drops databases (`flask bench --postgres`
    starts its clusters with the same code, uniquerand/bench/cluster.py)."""

    def __init__(self, server_url: str | None = None, salt: str | None = None) -> None:
        super().__init__(server_url, salt, base=BASE)


_lock = threading.Lock()
_session: Cluster | None = None


def cluster() -> Cluster:
    """This session's server, opened on first call: the one a parent process published in TEST_POSTGRES_SESSION,
    else the one TEST_POSTGRES_URL names, else a cluster started here and removed when this process exits."""
    global _session
    with _lock:
        if _session is None:
            _session = _open_session()
        return _session


def _open_session() -> Cluster:
    if published := os.environ.get(SESSION):
        salt, url = published.split(" ", 1)
        return Cluster(url, salt)
    opened = Cluster(os.environ.get(EXTERNAL_URL) or None)
    atexit.register(opened.close)
    if opened.is_local:
        opened.start()
    os.environ[SESSION] = f"{opened.salt} {opened.url()}"
    return opened


def database_for(key: str | Path) -> str:
    """The URL of a database of its own for `key` (a test's tmp_path, say), created on first call: the same URL
    for the same key throughout the session, in this process and in every process it starts."""
    server = cluster()
    return server.new_database("t_" + hashlib.sha256(f"{server.salt} {key}".encode()).hexdigest()[:16])


def require_local_cluster() -> Cluster:
    """The session's cluster, for a test that stops or restarts it; skips the test on a server reached by URL."""
    server = cluster()
    if not server.is_local:
        pytest.skip(f"needs a cluster the suite started: it must not stop or restart the server at {server.url()}")
    return server


def wait_for_setting(cluster: Cluster, name: str, value: str) -> None:
    """Until a new session sees the reloaded `value`: the server has then signalled every backend."""
    deadline = time.monotonic() + 10
    while cluster.sql("SELECT current_setting(%s)", params=[name])[0][0] != value:
        assert time.monotonic() < deadline, f"{name} never became {value!r}"
        time.sleep(0.02)
    # A pooled backend applies the signal before its next statement; a margin for the signal's delivery.
    time.sleep(0.2)


def start(servers: list, instance: Path, url: str, settings: dict, workers: int = 2) -> GunicornServer:
    """A gunicorn on the database at `url` with `settings` (names without UNIQUERAND_), kept in `servers` (the
    `servers` fixture stops every one by PID)."""
    env = {f"UNIQUERAND_{key}": str(value) for key, value in {**settings, "DATABASE_URL": url}.items()}
    server = GunicornServer(instance, env=env, workers=workers, threads=2)
    servers.append(server)
    server.start()
    return server


def give_key(source: GunicornServer, instance: Path) -> None:
    """A copy of `source`'s /v5 key file (0600) in `instance`, as docs/deploying.md tells an operator."""
    (instance / "v5").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source.instance_path / "v5" / "key", instance / "v5" / "key")
    (instance / "v5" / "key").chmod(0o600)


def start_pair(servers: list, tmp_path: Path, url: str, settings: dict) -> tuple[GunicornServer, GunicornServer]:
    """Two servers on one database, each with its own instance folder; B gets a copy of A's /v5 key."""
    a = start(servers, tmp_path / "a" / "instance", url, settings)
    # A's workers made the key at their start (the database's first use), before answering anything.
    assert (a.instance_path / "v5" / "key").exists()
    give_key(a, tmp_path / "b" / "instance")
    return a, start(servers, tmp_path / "b" / "instance", url, settings)
