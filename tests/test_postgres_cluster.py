"""The PostgreSQL harness of the tests (tests/postgres.py): its server, its databases, its restarts."""

from __future__ import annotations

import multiprocessing
import sys

import psycopg

from tests.postgres import database_for, require_local_cluster


def test_the_server_answers(postgres):
    assert postgres.sql("SELECT 1") == [(1,)]


def test_the_server_flushes_its_commits(postgres):
    assert postgres.sql("SHOW fsync") == [("on",)]


def test_each_key_has_a_database_of_its_own(postgres, tmp_path):
    first, second = database_for(tmp_path / "a"), database_for(tmp_path / "b")
    assert first != second
    assert database_for(tmp_path / "a") == first
    postgres.sql("CREATE TABLE marker (id int)", dbname=first.rsplit("/", 1)[1])
    with psycopg.connect(second, connect_timeout=10) as connection:
        assert connection.execute("SELECT to_regclass('marker')").fetchone() == (None,)


def test_database_url_is_a_fresh_database(database_url):
    with psycopg.connect(database_url, connect_timeout=10) as connection:
        tables = connection.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert tables == (0,)


def test_committed_rows_survive_an_immediate_restart(database_url):
    cluster = require_local_cluster()
    with psycopg.connect(database_url, autocommit=True, connect_timeout=10) as connection:
        connection.execute("CREATE TABLE kept (id int)")
        connection.execute("INSERT INTO kept VALUES (7)")
    cluster.restart_immediate()
    with psycopg.connect(database_url, connect_timeout=10) as connection:
        assert connection.execute("SELECT id FROM kept").fetchall() == [(7,)]


def test_the_server_is_back_after_an_outage(database_url):
    cluster = require_local_cluster()
    with cluster.unavailable():
        try:
            psycopg.connect(database_url, connect_timeout=2).close()
        except psycopg.OperationalError:
            pass
        else:
            raise AssertionError("connected to a stopped server")
    with psycopg.connect(database_url, connect_timeout=10) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)


def connect_to_database_for(key: str, expected_url: str) -> None:
    """Child process: exits 0 if `database_for(key)` is `expected_url` and answers, 2 if the URL differs."""
    url = database_for(key)
    if url != expected_url:
        sys.exit(2)
    with psycopg.connect(url, connect_timeout=10) as connection:
        connection.execute("SELECT 1")


def test_a_spawned_child_reaches_the_same_database(postgres, tmp_path):
    url = database_for(tmp_path)
    child = multiprocessing.get_context("spawn").Process(target=connect_to_database_for, args=(str(tmp_path), url))
    child.start()
    try:
        child.join(60)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
            child.join(10)
