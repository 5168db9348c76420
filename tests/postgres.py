"""A real PostgreSQL server for the tests, started by the first test that needs one: what the PostgreSQL stores
promise (locks, SKIP LOCKED, commits that survive a crash) only shows on a real server, so no mocks.

The suite starts a throwaway cluster from the Debian binaries on a free port of 127.0.0.1, or uses the server
TEST_POSTGRES_URL names. Spawned children and gunicorns reach the same server through TEST_POSTGRES_SESSION.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from uniquerand.bench import cluster as clusters
from uniquerand.bench.cluster import SETTINGS, ClusterError

__all__ = [
    "BASE",
    "EXTERNAL_URL",
    "SESSION",
    "SETTINGS",
    "Cluster",
    "ClusterError",
    "cluster",
    "database_for",
    "require_local_cluster",
]

EXTERNAL_URL = "TEST_POSTGRES_URL"
# The session's server, published for child processes. Not UNIQUERAND_*: conftest.py deletes those.
SESSION = "TEST_POSTGRES_SESSION"
BASE: Path = clusters.default_base("test")


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
