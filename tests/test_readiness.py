"""/readyz: 200 while every stage can serve; 503 JSON naming the stages that cannot, with Retry-After."""

from __future__ import annotations

from tests.support import free_port


def assert_not_ready(response, stages: set[str]) -> dict:
    assert response.status_code == 503
    assert response.content_type == "application/json"
    assert response.headers["Retry-After"] == "1"
    body = response.get_json()
    assert body["code"] == "not_ready"
    assert set(body["stages"]) == set(body["codes"]) == stages
    assert all(f"/{stage}" in body["error"] for stage in stages)
    return body


def test_ready_when_every_stage_can_serve(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready"}
    # Asking again reuses what the first answer opened.
    assert client.get("/readyz").status_code == 200


def test_a_damaged_store_makes_its_stage_not_ready(client, instance_path):
    assert client.get("/v3/random").status_code == 200
    (instance_path / "v3" / "numbers.db").write_bytes(b"not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (instance_path / "v3" / f"numbers.db{suffix}").unlink(missing_ok=True)
    # A new app: the first one keeps its open connection to the old file.
    from uniquerand import create_app

    fresh = create_app({"INSTANCE_PATH": str(instance_path), "TESTING": True}).test_client()
    body = assert_not_ready(fresh.get("/readyz"), {"v3"})
    assert "not a readable SQLite database" in body["stages"]["v3"]


def test_a_v5_key_that_is_not_the_database_s_makes_v5_not_ready(make_app, instance_path):
    assert make_app().test_client().get("/v5/random").status_code == 200
    (instance_path / "v5" / "key").write_bytes(bytes(32))
    body = assert_not_ready(make_app().test_client().get("/readyz"), {"v5"})
    assert body["codes"] == {"v5": "store_key_invalid"}


def test_a_host_of_a_database_without_its_v5_key_is_not_ready_and_one_given_the_key_file_is(
    make_app, database_url, tmp_path
):
    first = make_app(DATABASE_URL=database_url, V5_KEY_FILE=str(tmp_path / "secrets" / "v5-key"))
    assert first.test_client().get("/v5/random").status_code == 200
    assert (tmp_path / "secrets" / "v5-key").stat().st_mode & 0o777 == 0o600
    other = tmp_path / "other-host"
    stranger = make_app(DATABASE_URL=database_url, INSTANCE_PATH=str(other), V5_KEY_FILE=str(tmp_path / "none"))
    body = assert_not_ready(stranger.test_client().get("/readyz"), {"v5"})
    assert body["codes"] == {"v5": "store_key_invalid"}
    assert "UNIQUERAND_V5_KEY_FILE" in body["stages"]["v5"]
    assert stranger.test_client().get("/v5/random").get_json()["code"] == "store_key_invalid"
    mounted = make_app(
        DATABASE_URL=database_url, INSTANCE_PATH=str(other), V5_KEY_FILE=str(tmp_path / "secrets" / "v5-key")
    )
    assert mounted.test_client().get("/readyz").status_code == 200


def test_a_database_out_of_reach_makes_its_stages_not_ready_in_time(make_app):
    app = make_app(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/nothing", LOCK_TIMEOUT=1)
    body = assert_not_ready(app.test_client().get("/readyz"), {"v3", "v4", "v5"})
    assert "cannot be reached" in body["stages"]["v3"]


def test_ready_on_a_reachable_database(make_app, database_url):
    assert make_app(DATABASE_URL=database_url).test_client().get("/readyz").status_code == 200
