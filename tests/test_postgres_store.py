"""The PostgreSQL stores against a real server (tests/postgres.py): what the contract suite cannot say of files.
Durable connections whatever the server's defaults, foreign tables and settings refused untouched, /v5's
shared key, a COMMIT whose answer is lost, and a database that is away or out of connections."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from tests.postgres import require_local_cluster, wait_for_setting
from tests.support import REPO
from uniquerand import create_app
from uniquerand.storage.contract import (
    StoreCorruptError,
    StoreError,
    StoreKeyError,
    StoreUnavailableError,
)

SMALL = {
    "INT_MIN": 1,
    "INT_MAX": 3000,
    "MAX_COUNT": 100,
    "V4_SHARD_SIZE": 200,
    "V4_REFILL_AT": 100,
    "V5_BLOCK_SIZE": 50,
}


def stores(instance: Path, url: str, **settings):
    app = create_app({"INSTANCE_PATH": str(instance), "DATABASE_URL": url, **SMALL, **settings})
    return app.extensions["uniquerand"]["stores"]


def name_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def issue(store, kind: str = "int", count: int = 1) -> list[int]:
    """A store's codes, waiting out /v4's documented "being refilled" while its first refill runs."""
    for _ in range(200):
        try:
            return store.issue(kind, count).codes
        except StoreError as err:
            if type(err).__name__ != "ShardsEmptyError":
                raise
            time.sleep(0.05)
    raise AssertionError("the pools stayed empty")


def test_the_driver_is_imported_only_where_the_stores_run(postgres, database_url, tmp_path):
    # The gunicorn master builds nothing, but a worker imports the app before its first request: psycopg must
    # wait until a store is used, after gevent has patched the worker (PERF-NOTES.md).
    script = f"""
        import sys
        from uniquerand import create_app
        app = create_app({{"INSTANCE_PATH": {str(tmp_path)!r}, "DATABASE_URL": {database_url!r}}})
        assert "psycopg" not in sys.modules, "imported by create_app"
        app.extensions["uniquerand"]["stores"]["v3"].issue("int")
        assert "psycopg" in sys.modules
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_connections_commit_durably_whatever_the_database_default(postgres, database_url, tmp_path):
    postgres.sql(f"ALTER DATABASE {name_of(database_url)} SET synchronous_commit = off")
    store = stores(tmp_path, database_url)["v3"]
    issue(store)
    with store.database.connection("v3") as connection:
        assert connection.execute("SHOW synchronous_commit").fetchone()[0] == "on"


def test_the_urls_own_options_are_kept_beside_the_apps(postgres, database_url, tmp_path):
    # docs/deploying.md: options=-csearch_path=... keeps the tables in a schema of their own.
    postgres.sql("CREATE SCHEMA IF NOT EXISTS mine", dbname=name_of(database_url))
    store = stores(tmp_path, f"{database_url}?options=-csearch_path%3Dmine")["v3"]
    issue(store)
    with store.database.connection("v3") as connection:
        assert connection.execute("SHOW lock_timeout").fetchone()[0] != "0"
        query = "SELECT schemaname FROM pg_tables WHERE tablename = 'uniquerand_v3_int'"
        assert connection.execute(query).fetchall() == [("mine",)]


def test_a_server_without_fsync_is_refused(database_url, tmp_path):
    server = require_local_cluster()
    server.sql("ALTER SYSTEM SET fsync = off")
    server.sql("SELECT pg_reload_conf()")
    try:
        time.sleep(0.2)  # the reload reaches new backends at once; this is a margin, not an assertion
        for name in ("v3", "v4", "v5"):
            with pytest.raises(StoreUnavailableError, match="fsync=off"):
                stores(tmp_path, database_url)[name].issue("int")
    finally:
        server.sql("ALTER SYSTEM RESET fsync")
        server.sql("SELECT pg_reload_conf()")


@pytest.mark.parametrize(
    ("stage", "table", "columns"),
    [
        # Our inserts would pass through the assignment cast from bigint to text.
        ("v3", "uniquerand_v3_int", "code text PRIMARY KEY"),
        # The same columns without the PRIMARY KEY that makes the claims unique.
        ("v3", "uniquerand_v3_float", "code bigint NOT NULL"),
        ("v4", "uniquerand_v4_shards", "name text PRIMARY KEY"),
        ("v5", "uniquerand_v5_counters", "kind text PRIMARY KEY"),
    ],
)
def test_foreign_tables_of_our_names_are_refused_and_left_as_they_are(
    postgres, database_url, tmp_path, stage, table, columns
):
    name = name_of(database_url)
    postgres.sql(f"CREATE TABLE {table} ({columns})", name)
    postgres.sql(f"INSERT INTO {table} VALUES ('7')", name)
    with pytest.raises(StoreCorruptError, match=f"The table {table} in the database is not the one"):
        stores(tmp_path, database_url)[stage].issue("int")
    assert [str(value) for (value,) in postgres.sql(f"SELECT * FROM {table}", name)] == ["7"]
    assert postgres.sql("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'uniquerand%'", name) == [(1,)]


@pytest.mark.parametrize("stage", ["v3", "v4", "v5"])
def test_a_database_of_another_space_is_refused_and_left_as_it_is(postgres, database_url, tmp_path, stage):
    first = issue(stores(tmp_path / "a", database_url)[stage])
    recorded = postgres.sql("SELECT * FROM uniquerand_meta ORDER BY 1, 2", name_of(database_url))
    with pytest.raises(StoreCorruptError, match="INT_MIN/INT_MAX"):
        stores(tmp_path / "b", database_url, INT_MAX=4000)[stage].issue("int")
    assert postgres.sql("SELECT * FROM uniquerand_meta ORDER BY 1, 2", name_of(database_url)) == recorded
    assert len(first) == 1


def test_v5_refuses_a_key_made_for_its_sqlite_counters(postgres, database_url, tmp_path):
    # A host that served /v5 from SQLite, then pointed at a new database: its key would replay those numbers.
    served = issue(create_app({"INSTANCE_PATH": str(tmp_path), **SMALL}).extensions["uniquerand"]["stores"]["v5"])
    assert len(served) == 1
    with pytest.raises(StoreKeyError, match="was not made for this database"):
        stores(tmp_path, database_url)["v5"].issue("int")
    assert postgres.sql("SELECT count(*) FROM uniquerand_meta WHERE name LIKE 'key%%'", name_of(database_url)) == [(0,)]


def test_v5_hosts_share_one_key_and_refuse_without_it(postgres, database_url, tmp_path):
    first = stores(tmp_path / "a", database_url)["v5"]
    codes = issue(first, count=10)
    key = tmp_path / "a" / "v5" / "key"
    assert key.stat().st_mode & 0o777 == 0o600
    # A second host without the key file: it must not make one of its own.
    with pytest.raises(StoreKeyError, match="copy the key file"):
        stores(tmp_path / "b", database_url)["v5"].issue("int")
    assert not (tmp_path / "b" / "v5" / "key").exists()
    # With another key.
    (tmp_path / "c" / "v5").mkdir(parents=True)
    (tmp_path / "c" / "v5" / "key").write_bytes(bytes(32))
    (tmp_path / "c" / "v5" / "key").chmod(0o600)
    with pytest.raises(StoreKeyError, match="not the one"):
        stores(tmp_path / "c", database_url)["v5"].issue("int")
    # With a copy of the first host's key, it serves, and never what the first one served.
    (tmp_path / "d" / "v5").mkdir(parents=True)
    shutil.copy2(key, tmp_path / "d" / "v5" / "key")
    second = stores(tmp_path / "d", database_url)["v5"]
    codes += issue(second, count=10) + issue(first, count=10) + issue(second)
    assert len(set(codes)) == len(codes) == 31


@pytest.mark.parametrize("stage", ["v3", "v4", "v5"])
def test_a_commit_whose_answer_is_lost_serves_nothing_now_or_later(database_url, tmp_path, stage):
    """COMMIT waits for a standby that never comes; the session is then cut off. Its transaction committed
    locally (its numbers are recorded) but the store cannot know: it must fail and never serve them."""
    server = require_local_cluster()
    store = stores(tmp_path, database_url, LOCK_TIMEOUT=30, INT_MAX=400)[stage]
    before = issue(store, count=5)
    # A store of its own for the write that will be cut off: none of /v5's leases taken ahead by the first.
    cut = stores(tmp_path, database_url, LOCK_TIMEOUT=30, INT_MAX=400)[stage]
    cut.prepare()
    table = {"v3": "uniquerand_v3_int", "v4": "uniquerand_v4_pool_int", "v5": "uniquerand_v5_counters"}[stage]
    snapshot = server.sql(f"SELECT * FROM {table}", name_of(database_url))
    server.sql("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
    server.sql("SELECT pg_reload_conf()")
    try:
        wait_for_setting(server, "synchronous_standby_names", "nobody")
        with ThreadPoolExecutor(1) as pool:
            # /v5 serves from its lease: a batch beyond it takes a new one.
            pending = pool.submit(cut.issue, "int", 60 if stage == "v5" else 3)
            waiting = []
            for _ in range(300):
                query = "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event = 'SyncRep'"
                waiting = server.sql(query, params=[name_of(database_url)])
                if waiting:
                    break
                time.sleep(0.05)
            assert waiting, "the store's COMMIT never waited for the standby"
            for (pid,) in waiting:
                server.sql("SELECT pg_terminate_backend(%s)", params=[pid])
            with pytest.raises(StoreUnavailableError):
                pending.result(timeout=60)
    finally:
        server.sql("ALTER SYSTEM RESET synchronous_standby_names")
        server.sql("SELECT pg_reload_conf()")
    # The write did commit: the database changed.
    assert server.sql(f"SELECT * FROM {table}", name_of(database_url)) != snapshot
    # Whatever it recorded is never served, by this store or a new one: the space is served to its end.
    served = before + [code for _ in range(80) for code in issue(store, count=1)]
    fresh = stores(tmp_path, database_url, LOCK_TIMEOUT=30, INT_MAX=400)[stage]
    rest: list[int] = []
    with pytest.raises(StoreError, match=r"All possible numbers have been used|held by other workers"):
        while True:
            rest += issue(fresh)
    everything = served + rest
    assert len(everything) == len(set(everything))
    assert len(everything) < 400  # the lost commit's numbers are gone for good


def test_an_unreachable_database_answers_in_time_and_the_store_recovers(database_url, tmp_path):
    server = require_local_cluster()
    all_stores = stores(tmp_path, database_url, LOCK_TIMEOUT=1)
    for name in ("v3", "v4", "v5"):
        issue(all_stores[name])
    with server.unavailable():
        for name in ("v3", "v4"):
            with pytest.raises(StoreUnavailableError):
                all_stores[name].issue("int", 2)
    for name in ("v3", "v4", "v5"):
        assert len(issue(all_stores[name], count=100)) == 100


def test_a_pool_with_every_connection_in_use_answers_unavailable(database_url, tmp_path):
    store = stores(tmp_path, database_url, LOCK_TIMEOUT=2, DATABASE_POOL_SIZE=2)["v3"]
    issue(store)
    with (
        store.database.connection("test"),
        store.database.connection("test"),
        pytest.raises(StoreUnavailableError, match="all its connections are in use"),
    ):
        store.issue("int")
    assert len(issue(store)) == 1


def test_a_group_whose_transaction_failed_commits_nothing_and_says_so(database_url, tmp_path):
    # A job without a savepoint whose statement fails aborts the group's transaction; PostgreSQL then answers
    # COMMIT with a silent ROLLBACK. The jobs that ran before it must fail too, not be served unrecorded.
    store = stores(tmp_path, database_url)["v3"]
    issue(store)
    target = store.database.target("numbers", "v3")
    connection = target.begin()
    connection.execute("INSERT INTO uniquerand_v3_int (code) VALUES (7)")
    with pytest.raises(psycopg.errors.DivisionByZero):
        connection.execute("SELECT 1 / 0")
    with pytest.raises(StoreUnavailableError, match="rolled back"):
        target.commit(connection)
    with store.database.connection("test") as check:
        assert check.execute("SELECT count(*) FROM uniquerand_v3_int WHERE code = 7").fetchone()[0] == 0


def test_init_shards_fills_the_pools_in_the_database(make_app, database_url):
    app = make_app(DATABASE_URL=database_url, V4_SHARD_SIZE=1500)
    result = app.test_cli_runner().invoke(args=["init-shards"])
    assert result.exit_code == 0, result.output
    assert "int_shard_0.db: added 1500, available 1500" in result.output
    stats = app.extensions["uniquerand"]["stores"]["v4"].stats()
    assert [shard["available"] for shard in stats["float"]["shards"].values()] == [1500, 1500]
    assert stats["int"]["ledger"] == 3000
    # Filled already: a second run adds nothing.
    again = make_app(DATABASE_URL=database_url, V4_SHARD_SIZE=1500).test_cli_runner().invoke(args=["init-shards"])
    assert "int_shard_1.db: added 0, available 1500" in again.output


def test_v5_counts_a_holder_on_another_host_as_live_while_its_heartbeat_is_fresh(postgres, database_url, tmp_path):
    store = stores(tmp_path, database_url)["v5"]
    issue(store)
    name = name_of(database_url)
    postgres.sql(
        "INSERT INTO uniquerand_v5_leases (kind, start, stop, holder) VALUES ('int', 100000, 100050, 'elsewhere:42:7')",
        name,
    )
    postgres.sql("INSERT INTO uniquerand_v5_holders VALUES ('elsewhere:42:7', now() - interval '5 seconds')", name)
    assert store.counters.held_elsewhere("int") == [50]
    postgres.sql("UPDATE uniquerand_v5_holders SET heartbeat = now() - interval '2 minutes'", name)
    assert store.counters.held_elsewhere("int") == []


def test_the_index_names_every_table_each_stage_keeps(database_url, tmp_path):
    # GET / tells an operator where each stage keeps its state: after every kind of draw, the tables the
    # database holds are the ones the stages name.
    client = create_app({"INSTANCE_PATH": str(tmp_path), "DATABASE_URL": database_url, "TESTING": True}).test_client()
    assert client.put("/v5/spaces/t", json={"type": "int", "min": 1, "max": 100}).status_code == 201
    for path in ("/v3/random", "/v4/random", "/v5/random", "/v5/spaces/t/random?signed=true"):
        for _ in range(50):  # /v4's pools fill in the background
            if (response := client.get(path, headers={"Idempotency-Key": f"k{path}"})).status_code == 200:
                break
            time.sleep(0.1)
        assert response.status_code == 200, (path, response.get_json())
    named = " ".join(stage["store"] for stage in client.get("/").get_json()["stages"])
    with psycopg.connect(database_url) as connection:
        query = "SELECT tablename FROM pg_tables WHERE tablename LIKE 'uniquerand%'"
        tables = {name for (name,) in connection.execute(query).fetchall()}
    shared = {"uniquerand_meta"}  # every stage's recorded settings
    assert "uniquerand_v5_draws" in tables
    for table in tables - shared:
        # /v4 names its per-type tables once: uniquerand_v4_pool_{int,float}.
        assert table in named or f"{table.rsplit('_', 1)[0]}_{{int,float}}" in named, (table, named)
