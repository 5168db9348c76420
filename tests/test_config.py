"""Settings: defaults, UNIQUERAND_* variables, and validation that names the bad setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from uniquerand import create_app
from uniquerand.config import ConfigError


def test_defaults(app, instance_path):
    assert app.config["INT_MIN"] == 0
    assert app.config["INT_MAX"] == 4294967295
    assert app.config["FLOAT_MAX"] == 100000000
    assert app.config["FLOAT_DECIMALS"] == 6
    assert app.config["MAX_ATTEMPTS"] == 100
    assert app.config["INSTANCE_PATH"] == str(instance_path.resolve())


def test_default_instance_path_is_beside_wsgi():
    app = create_app()
    repo = Path(__file__).resolve().parent.parent
    assert (repo / "wsgi.py").is_file()
    assert app.config["INSTANCE_PATH"] == str(repo / "instance")


def test_environment_overrides_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("UNIQUERAND_INT_MIN", "10")
    monkeypatch.setenv("UNIQUERAND_INT_MAX", "20")
    monkeypatch.setenv("UNIQUERAND_INSTANCE_PATH", str(tmp_path / "data"))
    app = create_app()
    assert (app.config["INT_MIN"], app.config["INT_MAX"]) == (10, 20)
    assert app.config["INSTANCE_PATH"] == str(tmp_path / "data")
    assert app.extensions["uniquerand"]["spaces"]["int"].size == 11


def test_test_config_overrides_environment(monkeypatch, make_app):
    monkeypatch.setenv("UNIQUERAND_INT_MAX", "20")
    assert make_app(INT_MAX=30).config["INT_MAX"] == 30


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"INT_MIN": 5, "INT_MAX": 4}, "INT_MAX"),
        ({"INT_MAX": 2**53}, "INT_MAX"),
        ({"INT_MIN": -(2**53)}, "INT_MIN"),
        ({"INT_MIN": "ten"}, "INT_MIN"),
        ({"INT_MAX": True}, "INT_MAX"),
        ({"FLOAT_MIN": 5, "FLOAT_MAX": 5}, "FLOAT_MAX"),
        ({"FLOAT_MAX": 10**10}, "FLOAT_MAX"),
        ({"FLOAT_MIN": -(2**52) - 1, "FLOAT_DECIMALS": 0}, "FLOAT_MIN"),
        ({"FLOAT_MIN": "0.0000001"}, "FLOAT_MIN"),
        ({"FLOAT_MAX": "nan"}, "FLOAT_MAX"),
        ({"FLOAT_DECIMALS": -1}, "FLOAT_DECIMALS"),
        ({"FLOAT_DECIMALS": 16}, "FLOAT_DECIMALS"),
        ({"MAX_ATTEMPTS": 0}, "MAX_ATTEMPTS"),
        ({"MAX_COUNT": 0}, "MAX_COUNT"),
        ({"LOCK_TIMEOUT": 0}, "LOCK_TIMEOUT"),
        ({"LOCK_TIMEOUT": "soon"}, "LOCK_TIMEOUT"),
        ({"LOCK_TIMEOUT": "inf"}, "LOCK_TIMEOUT"),
        ({"LOCK_TIMEOUT": "nan"}, "LOCK_TIMEOUT"),
        ({"V3_SETTLE_AT": 0}, "V3_SETTLE_AT"),
        ({"V3_SETTLE_AT": "many"}, "V3_SETTLE_AT"),
        ({"ASYNC_REPLICATION": "allow"}, "ASYNC_REPLICATION"),
        ({"DATABASE_POOLER": "transaction"}, "DATABASE_POOLER"),
        ({"V5_LEASE_GROWTH": 0}, "V5_LEASE_GROWTH"),
    ],
)
def test_invalid_settings_fail_at_startup_naming_the_setting(make_app, settings, named):
    with pytest.raises(ConfigError, match=named):
        make_app(**settings)


def test_invalid_environment_variable_fails_at_startup(monkeypatch, tmp_path):
    monkeypatch.setenv("UNIQUERAND_INSTANCE_PATH", str(tmp_path))
    monkeypatch.setenv("UNIQUERAND_FLOAT_DECIMALS", "many")
    with pytest.raises(ConfigError, match="FLOAT_DECIMALS"):
        create_app()


def test_the_widest_json_safe_int_range_is_served_by_every_stage(make_app):
    client = make_app(INT_MIN=-(2**53 - 1), INT_MAX=2**53 - 1).test_client()
    for stage in ("v1", "v2", "v3", "v5"):
        response = client.get(f"/{stage}/random")
        assert response.status_code == 200, response.get_json()
        assert abs(response.get_json()["number"]) < 2**53


def test_float_bounds_on_the_grid(make_app):
    app = make_app(FLOAT_MIN="0.5", FLOAT_MAX=2, FLOAT_DECIMALS=1)
    space = app.extensions["uniquerand"]["spaces"]["float"]
    assert (space.low, space.high, space.size) == (5, 19, 15)


def test_creating_the_app_touches_no_file(make_app, instance_path):
    make_app()
    assert not instance_path.exists()


def test_an_unknown_uniquerand_variable_stops_the_start_naming_it_and_the_nearest_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("UNIQUERAND_INSTANCE_PATH", str(tmp_path))
    monkeypatch.setenv("UNIQUERAND_INT_MAXX", "20")
    with pytest.raises(
        ConfigError, match=r"UNIQUERAND_INT_MAXX is not a uniquerand setting\. Did you mean UNIQUERAND_INT_MAX\?"
    ):
        create_app()
    monkeypatch.delenv("UNIQUERAND_INT_MAXX")
    # gunicorn.conf.py's settings are known too.
    for name in ("UNIQUERAND_BIND", "UNIQUERAND_WORKERS", "UNIQUERAND_WORKER_CLASS", "UNIQUERAND_THREADS"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("UNIQUERAND_NOTHING_LIKE_IT", "1")
    with pytest.raises(ConfigError, match=r"UNIQUERAND_NOTHING_LIKE_IT is not a uniquerand setting\. The settings"):
        create_app()


def test_an_sqlite_without_returning_is_refused_naming_its_version():
    from uniquerand.config import check_sqlite

    with pytest.raises(ConfigError, match=r"SQLite 3\.34\.1; uniquerand needs 3\.35\.0 or newer"):
        check_sqlite("3.34.1")
    check_sqlite("3.35.0")
    check_sqlite("3.40.1")
