"""The HTTP contract through Flask's test client: shapes, types, headers, and JSON errors."""

from __future__ import annotations

import runpy

import pytest
from flask import jsonify

from tests.support import REPO
from uniquerand.blueprints.common import numbers_response

STAGES = ["v1", "v2", "v3"]
STRICT = ["v2", "v3"]


def assert_json_error(response, status: int) -> dict:
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert isinstance(body["error"], str)
    assert body["error"]
    return body


@pytest.mark.parametrize("stage", STAGES)
def test_random_int_by_default(client, stage):
    response = client.get(f"/{stage}/random")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    number = response.get_json()["number"]
    assert type(number) is int
    assert 0 <= number <= 4294967295


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("value", ["float", "FLOAT", "Float"])
def test_random_float(client, stage, value):
    response = client.get(f"/{stage}/random?type={value}")
    assert response.status_code == 200
    number = response.get_json()["number"]
    assert type(number) is float
    assert 0 <= number < 100000000
    assert round(number, 6) == number


@pytest.mark.parametrize("stage", STRICT)
@pytest.mark.parametrize("value", ["int", "INT"])
def test_strict_stages_accept_int(client, stage, value):
    assert type(client.get(f"/{stage}/random?type={value}").get_json()["number"]) is int


@pytest.mark.parametrize("value", ["", "decimal", "floaty", "1"])
def test_v1_reads_type_leniently(client, value):
    response = client.get(f"/v1/random?type={value}")
    assert response.status_code == 200
    assert type(response.get_json()["number"]) is int


@pytest.mark.parametrize("stage", STRICT)
@pytest.mark.parametrize("query", ["type=decimal", "type=", "type=floaty", "type=int&type=float"])
def test_strict_stages_reject_a_bad_type(client, stage, query):
    body = assert_json_error(client.get(f"/{stage}/random?{query}"), 422)
    assert body["parameter"] == "type"
    assert "type" in body["error"]


@pytest.mark.parametrize("stage", STRICT)
@pytest.mark.parametrize("kind", ["int", "float"])
def test_a_query_that_begins_like_a_single_number_is_read_whole(client, stage, kind):
    # `type=int` and `type=float` alone skip the parser; anything after them must not be ignored.
    numbers = client.get(f"/{stage}/random?type={kind}&count=2").get_json()["numbers"]
    assert [type(number).__name__ for number in numbers] == [kind, kind]
    body = assert_json_error(client.get(f"/{stage}/random?type={kind}&type={kind}"), 422)
    assert body["parameter"] == "type"


@pytest.mark.parametrize("stage", STRICT)
def test_a_bad_type_names_the_allowed_values(client, stage):
    body = assert_json_error(client.get(f"/{stage}/random?type=decimal"), 422)
    assert body["allowed"] == ["int", "float"]


WIDEST = {"INT_MIN": -(2**53 - 1), "INT_MAX": 2**53 - 1}
FINE = {"FLOAT_DECIMALS": 15, "FLOAT_MIN": -1, "FLOAT_MAX": 1}
WHOLE = {"FLOAT_DECIMALS": 0, "FLOAT_MIN": -(2**52), "FLOAT_MAX": 2**52}


@pytest.mark.parametrize(
    ("settings", "kind", "code"),
    [
        ({}, "int", 0),
        ({}, "int", 4294967295),
        (WIDEST, "int", 2**53 - 1),
        (WIDEST, "int", -(2**53 - 1)),
        ({}, "float", 0),
        ({}, "float", 1),  # 1e-06: the exponent form
        ({}, "float", 10**6),  # 1.0
        ({}, "float", 10**14 - 1),  # 99999999.999999
        (FINE, "float", -(10**15)),  # -1.0
        (FINE, "float", 1),  # 1e-15
        (FINE, "float", 333333333333333),  # 0.333333333333333
        (WHOLE, "float", -(2**52)),
        (WHOLE, "float", 2**52 - 1),
    ],
)
def test_a_single_number_is_written_as_jsonify_writes_it(make_app, settings, kind, code):
    """A single number's response is written by hand (it is the hot path): the same bytes and headers."""
    app = make_app(**settings)
    space = app.extensions["uniquerand"]["spaces"][kind]
    with app.test_request_context("/"):
        assert space.contains(code)
        written = numbers_response(space, [code])
        expected = jsonify({"number": space.to_json_value(code)})
    assert written.get_data() == expected.get_data()
    assert written.headers == expected.headers


@pytest.mark.parametrize("codes", [[1], [-(2**53 - 1), 0, 2**53 - 1], list(range(-500, 500))])
def test_a_batch_of_ints_is_written_as_jsonify_writes_it(make_app, codes):
    """A batch of ints is written by hand too (a batch of 1000 spent more in jsonify than in its draw)."""
    app = make_app(**WIDEST)
    space = app.extensions["uniquerand"]["spaces"]["int"]
    with app.test_request_context("/"):
        written = numbers_response(space, codes, count=len(codes))
        expected = jsonify({"numbers": codes})
    assert written.get_data() == expected.get_data()
    assert written.headers == expected.headers


def test_healthz_is_written_as_jsonify_writes_it(app):
    """`/healthz`, the benchmark's baseline, is written the same way as a single number."""
    response = app.test_client().get("/healthz")
    with app.test_request_context("/"):
        expected = jsonify({"status": "ok"})
    assert response.get_data() == expected.get_data()
    assert response.headers["Content-Type"] == expected.headers["Content-Type"]


@pytest.mark.parametrize("stage", STRICT)
def test_batches(client, stage):
    response = client.get(f"/{stage}/random?count=25&type=float")
    assert response.status_code == 200
    numbers = response.get_json()["numbers"]
    assert len(numbers) == len(set(numbers)) == 25
    assert all(type(number) is float for number in numbers)


@pytest.mark.parametrize("stage", STRICT)
@pytest.mark.parametrize("count", ["0", "-1", "1001", "ten", "1.5", "", "٣"])
def test_bad_counts_are_rejected(client, stage, count):
    body = assert_json_error(client.get(f"/{stage}/random?count={count}"), 422)
    assert body["parameter"] == "count"
    assert "1000" in body["error"]


@pytest.mark.parametrize("stage", STRICT)
def test_batch_beyond_what_remains_is_refused_and_issues_nothing(make_app, stage):
    client = make_app(INT_MIN=1, INT_MAX=10).test_client()
    body = assert_json_error(client.get(f"/{stage}/random?count=11"), 503)
    assert (body["requested"], body["remaining"]) == (11, 10)
    assert "10 remain" in body["error"]
    assert client.get(f"/{stage}/stats").get_json()["types"]["int"]["issued"] == 0


@pytest.mark.parametrize("stage", STAGES)
def test_small_space_is_served_to_the_last_number_then_exhausted(make_app, stage):
    client = make_app(INT_MIN=1, INT_MAX=50).test_client()
    numbers = [client.get(f"/{stage}/random").get_json()["number"] for _ in range(50)]
    assert sorted(numbers) == list(range(1, 51))
    for _ in range(3):
        response = client.get(f"/{stage}/random")
        body = assert_json_error(response, 503)
        assert "all possible numbers have been used" in body["error"].lower()
        assert "Retry-After" not in response.headers
    assert client.get(f"/{stage}/random?type=float").status_code == 200


@pytest.mark.parametrize("stage", STAGES)
def test_stats_match_what_was_issued(make_app, stage):
    client = make_app(INT_MIN=1, INT_MAX=100).test_client()
    for _ in range(7):
        client.get(f"/{stage}/random")
    client.get(f"/{stage}/random?type=float")
    response = client.get(f"/{stage}/stats")
    assert response.headers["Cache-Control"] == "no-store"
    types = response.get_json()["types"]
    assert types["int"] == {"issued": 7, "space_size": 100, "remaining": 93}
    assert types["float"]["issued"] == 1
    assert types["float"]["space_size"] == 10**14


def test_stages_are_independent(client, instance_path):
    client.get("/v1/random")
    client.get("/v3/random")
    assert (instance_path / "v1" / "used_numbers.json").exists()
    assert (instance_path / "v3" / "numbers.db").exists()
    assert not (instance_path / "v2").exists()
    assert client.get("/v2/stats").get_json()["types"]["int"]["issued"] == 0


def test_healthz_touches_no_store(client, instance_path):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert not instance_path.exists()


def test_index_lists_every_stage_with_links(client):
    body = client.get("/").get_json()
    prefixes = [stage["prefix"] for stage in body["stages"]]
    assert prefixes == ["/v1", "/v2", "/v3", "/v4", "/v5"]
    for stage in body["stages"]:
        assert stage["description"] and stage["store"]
        for link in stage["links"].values():
            response = client.get(link)
            # /v4's shards start empty: its documented "being refilled" 503 is a working link too.
            assert response.status_code == 200 or "Retry-After" in response.headers, response.get_json()


def test_unknown_path_is_a_json_404(client):
    body = assert_json_error(client.get("/hello"), 404)
    assert body["code"] == "not_found"


def test_wrong_method_is_a_json_405_with_allow(client):
    response = client.post("/v3/random")
    assert_json_error(response, 405)
    assert "GET" in response.headers["Allow"]


# The bodies whose text is this project's own are pinned whole; werkzeug words the 404 and the 405.
COMPACT_ERRORS = [
    ("GET", "/hello", 404, None),
    ("DELETE", "/v2/random", 405, None),
    ("GET", "/v2/random?type=decimal", 422,
     b'{"allowed":["int","float"],"code":"invalid_parameter","error":"Invalid \'type\': it must be one of int, '
     b'float.","parameter":"type"}\n'),
    ("GET", "/v3/random?count=3", 503,
     b'{"code":"insufficient_remaining","error":"Asked for 3 numbers but only 2 remain in the space.",'
     b'"remaining":2,"requested":3}\n'),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "status", "expected"), COMPACT_ERRORS)
def test_error_bodies_are_compact_as_jsonify_writes_them(make_app, method, path, status, expected):
    """One JSON style: error bodies are written as success bodies are (jsonify outside debug mode)."""
    app = make_app(INT_MIN=1, INT_MAX=2)
    response = app.test_client().open(path, method=method)
    assert_json_error(response, status)
    body = response.get_data()
    assert b'": ' not in body and b'", ' not in body, body
    with app.test_request_context("/"):
        assert body == jsonify(response.get_json()).get_data()
    if expected is not None:
        assert body == expected


def test_gunicorns_own_error_pages_are_compact_as_jsonify_writes_them(monkeypatch):
    """What gunicorn refuses before the app sees it (gunicorn.conf.py's `json_error_pages`), in the same style."""
    from gunicorn import util

    sent: list[bytes] = []
    monkeypatch.setattr(util, "write_error", util.write_error)  # restored after the test: the hook replaces it
    monkeypatch.setattr(util, "write_nonblock", lambda sock, data: sent.append(data))
    runpy.run_path(str(REPO / "gunicorn.conf.py"))["json_error_pages"]()
    util.write_error(None, 414, "URI Too Long", "")
    head, _, body = sent[0].partition(b"\r\n\r\n")
    assert body == b'{"code":"uri_too_long","error":"URI Too Long"}\n'
    assert b"Content-Type: application/json\r\n" in head and f"Content-Length: {len(body)}".encode() in head


def test_unhandled_fault_is_a_generic_json_500(app, caplog):
    def boom():
        raise RuntimeError("secret internals")

    app.add_url_rule("/boom", view_func=boom)
    body = assert_json_error(app.test_client().get("/boom"), 500)
    assert "secret internals" not in body["error"]
    assert "secret internals" in caplog.text


@pytest.mark.parametrize(("stage", "name"), [("v1", "used_numbers.json"), ("v2", "used_numbers.json")])
def test_corrupt_json_store_fails_closed_and_other_stages_serve(client, instance_path, stage, name):
    path = instance_path / stage / name
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"format": "uniquerand-json-v1", "int": [1, 2')
    body = assert_json_error(client.get(f"/{stage}/random"), 500)
    assert "not valid JSON" in body["error"]
    assert_json_error(client.get(f"/{stage}/stats"), 500)
    assert path.read_bytes() == b'{"format": "uniquerand-json-v1", "int": [1, 2'
    assert client.get("/v3/random").status_code == 200


def test_non_database_sqlite_store_fails_closed_and_other_stages_serve(client, instance_path):
    path = instance_path / "v3" / "numbers.db"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a database" * 100)
    body = assert_json_error(client.get("/v3/random"), 500)
    assert "not a readable SQLite database" in body["error"]
    assert path.read_bytes() == b"not a database" * 100
    assert client.get("/v1/random").status_code == 200


def test_busy_store_is_a_503_with_retry_after(make_app, instance_path):
    import filelock

    client = make_app(LOCK_TIMEOUT=0.2).test_client()
    client.get("/v2/random")
    holder = filelock.FileLock(str(instance_path / "v2" / "used_numbers.json.lock"), thread_local=False)
    # flock locks belong to an open file: a second FileLock in this process conflicts like another process.
    with holder:
        response = client.get("/v2/random")
    body = assert_json_error(response, 503)
    assert response.headers["Retry-After"] == "1"
    assert body["code"] == "store_busy"
