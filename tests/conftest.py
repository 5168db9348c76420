"""Fixtures: an app on a private instance folder, its test client and CLI runner, real gunicorn servers, and a
real PostgreSQL server with a database per test."""

from __future__ import annotations

import os

import pytest

from tests import postgres as postgres_server
from tests.support import GunicornServer
from uniquerand import create_app
from uniquerand.storage.postgres.database import Database


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the slower tier (tests marked slow; CI runs it)")


def pytest_collection_modifyitems(config, items):
    """Every test on the suite's PostgreSQL server is marked `postgres` (`-m "not postgres"` skips them); the
    tests marked `slow` run only with --slow, so that the default run stays within minutes."""
    for item in items:
        if "postgres" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)
    if not config.getoption("--slow"):
        slow = [item for item in items if item.get_closest_marker("slow")]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    for key in list(os.environ):
        if key.startswith("UNIQUERAND_"):
            monkeypatch.delenv(key)


@pytest.fixture(autouse=True)
def _close_database_connections(monkeypatch):
    """Closes the PostgreSQL connections a test's stores opened when it ends: a store keeps its pool for its
    process's life, and the suite's hundreds of stores would use up the test server's connections."""
    opened: list[Database] = []
    open_pool = Database._open_pool

    def open_and_remember(database: Database):
        opened.append(database)
        return open_pool(database)

    monkeypatch.setattr(Database, "_open_pool", open_and_remember)
    yield
    for database in opened:
        database.close()


@pytest.fixture
def instance_path(tmp_path):
    return tmp_path / "instance"


@pytest.fixture
def make_app(instance_path):
    """Builds an app on the private instance folder with extra settings."""

    def build(**settings):
        return create_app({"INSTANCE_PATH": str(instance_path), "TESTING": True, **settings})

    return build


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def filled_shards(make_app):
    """Fills /v4's shards in the private instance folder (as `flask init-shards` does), so that /v4 serves
    from its first request instead of answering its documented "being refilled" 503."""

    def fill(size: int = 2000, **settings) -> None:
        make_app(**settings).extensions["uniquerand"]["stores"]["v4"].fill_shards(size)

    return fill


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def make_server(instance_path):
    """Starts real gunicorn servers on 127.0.0.1 and stops every one of them by PID afterwards."""
    servers: list[GunicornServer] = []

    def start(env: dict[str, str] | None = None, **options) -> GunicornServer:
        server = GunicornServer(instance_path, env=env, **options)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop(graceful=False)


@pytest.fixture
def servers():
    """Every gunicorn a test starts with `tests.postgres.start`, stopped by PID afterwards whatever happened."""
    started: list[GunicornServer] = []
    yield started
    for server in started:
        server.stop(graceful=False)


@pytest.fixture(scope="session")
def postgres() -> postgres_server.Cluster:
    """The session's PostgreSQL server, started by the first test that asks for it (see tests/postgres.py)."""
    # Closed at exit (tests/postgres.py), after the stores' own exit hooks, which still use it.
    return postgres_server.cluster()


@pytest.fixture
def database_url(postgres, tmp_path) -> str:
    """A database of the test's own on the session's server: its URL."""
    return postgres_server.database_for(tmp_path)
