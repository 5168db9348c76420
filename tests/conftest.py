"""Fixtures: an app on a private instance folder, its test client and CLI runner, and real gunicorn servers."""

from __future__ import annotations

import os

import pytest

from tests.support import GunicornServer
from uniquerand import create_app


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    for key in list(os.environ):
        if key.startswith("UNIQUERAND_"):
            monkeypatch.delenv(key)


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
