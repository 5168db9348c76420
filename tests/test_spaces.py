"""Named spaces through the app: creating one (idempotent, conflicts, bad definitions), reading and listing
them, drawing from one to its end, and the stage's own /v5 spaces beside them; on SQLite, and (the tests that
reach the store) on PostgreSQL."""

from __future__ import annotations

import sqlite3

import pytest

TICKETS = {"type": "int", "min": 1, "max": 50}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stored(request, make_app):
    """An app whose /v5 keeps its spaces in SQLite, or in a PostgreSQL database of the test's own."""
    if request.param == "sqlite":
        return make_app()
    return make_app(DATABASE_URL=request.getfixturevalue("database_url"))


@pytest.fixture
def client(stored):
    return stored.test_client()


def test_create_is_201_then_200_with_the_same_definition(client):
    first = client.put("/v5/spaces/tickets", json=TICKETS)
    assert first.status_code == 201
    assert first.json | {"created": None} == {"name": "tickets", "type": "int", "min": 1, "max": 50, "created": None}
    again = client.put("/v5/spaces/tickets", json=TICKETS)
    assert again.status_code == 200 and again.json == first.json


def test_another_definition_under_a_used_name_is_409_and_changes_nothing(client):
    client.put("/v5/spaces/tickets", json=TICKETS)
    for other in ({**TICKETS, "max": 51}, {"type": "float", "min": 1, "max": 50}):
        response = client.put("/v5/spaces/tickets", json=other)
        assert response.status_code == 409 and response.json["code"] == "space_conflict"
    assert client.get("/v5/spaces/tickets").json["max"] == 50


@pytest.mark.parametrize(
    ("name", "body", "parameter"),
    [
        ("Upper", TICKETS, "name"),
        ("-dash-first", TICKETS, "name"),
        ("a" * 64, TICKETS, "name"),
        ("ok", {"type": "int", "min": 5, "max": 4}, "max"),
        ("ok", {"type": "int", "min": 0, "max": 2**62 + 1}, "max"),
        ("ok", {"type": "int", "min": -(2**62), "max": 2**62}, "max"),
        ("ok", {"type": "int", "min": 0.5, "max": 4}, "min"),
        ("ok", {"type": "int", "min": True, "max": 4}, "min"),
        ("ok", {"type": "int", "min": 0, "max": 4, "decimals": 2}, "decimals"),
        ("ok", {"type": "float", "min": 1, "max": 1}, "max"),
        ("ok", {"type": "float", "min": 0, "max": 1, "decimals": 16}, "decimals"),
        ("ok", {"type": "float", "min": 0.001, "max": 1, "decimals": 2}, "min"),
        ("ok", {"type": "float", "min": 0, "max": 2**53, "decimals": 0}, "max"),
        ("ok", {"type": "decimal", "min": 0, "max": 1}, "type"),
        ("ok", {"type": "int", "min": 0}, "max"),
        ("ok", {"type": "int", "min": 0, "max": 1, "colour": "red"}, "colour"),
        ("ok", [1, 2], "body"),
    ],
)
def test_bad_definitions_are_422_naming_the_field(app, name, body, parameter):
    client = app.test_client()
    response = client.put(f"/v5/spaces/{name}", json=body)
    assert response.status_code == 422, response.json
    assert response.json["code"] == "invalid_parameter" and response.json["parameter"] == parameter
    assert client.get("/v5/spaces").json["spaces"] == []


def test_a_body_that_is_not_json_is_422_and_a_huge_one_413(app):
    client = app.test_client()
    for junk in (b"\xff{", b"[" * 4000, b"[]", b"null"):
        response = client.put("/v5/spaces/ok", data=junk, content_type="application/json")
        assert response.status_code == 422 and response.json["parameter"] == "body", junk[:8]
    response = client.put("/v5/spaces/ok", data=b" " * 5000, content_type="application/json")
    assert response.status_code == 413 and response.is_json


def test_a_space_is_drawn_to_its_end_without_a_repeat(client):
    client.put("/v5/spaces/tickets", json=TICKETS)
    numbers = [client.get("/v5/spaces/tickets/random").json["number"] for _ in range(10)]
    numbers += client.get("/v5/spaces/tickets/random?count=40").json["numbers"]
    assert sorted(numbers) == list(range(1, 51))
    response = client.get("/v5/spaces/tickets/random")
    assert response.status_code == 503 and response.json["code"] == "space_exhausted"
    assert "Retry-After" not in response.headers
    counts = client.get("/v5/spaces/tickets").json
    assert (counts["issued"], counts["remaining"], counts["space_size"]) == (50, 0, 50)


def test_a_batch_larger_than_what_remains_issues_nothing(client):
    client.put("/v5/spaces/tickets", json=TICKETS)
    response = client.get("/v5/spaces/tickets/random?count=51")
    assert response.status_code == 503 and response.json["code"] == "insufficient_remaining"
    assert client.get("/v5/spaces/tickets/random?count=50").status_code == 200


def test_float_spaces_are_on_their_grid_in_min_max(client):
    body = {"type": "float", "min": 0, "max": 1, "decimals": 2}
    assert client.put("/v5/spaces/odds", json=body).json["decimals"] == 2
    numbers = client.get("/v5/spaces/odds/random?count=100").json["numbers"]
    assert sorted(round(number * 100) for number in numbers) == list(range(100))
    assert all(round(number, 2) == number for number in numbers)


def test_two_spaces_of_one_range_serve_different_sequences(client):
    for name in ("a", "b"):
        client.put(f"/v5/spaces/{name}", json={"type": "int", "min": 0, "max": 2**32 - 1})
    first, second = (client.get(f"/v5/spaces/{name}/random?count=20").json["numbers"] for name in ("a", "b"))
    assert first != second


def test_unknown_spaces_are_404_on_every_path(client):
    for path in ("/v5/spaces/nope", "/v5/spaces/nope/random", "/v5/spaces/NOT-A-NAME/random"):
        response = client.get(path)
        assert response.status_code == 404 and response.json["code"] == "space_not_found"


def test_the_list_is_paginated_in_name_order(client):
    names = [f"s{index:02}" for index in range(7)]
    for name in reversed(names):
        client.put(f"/v5/spaces/{name}", json=TICKETS)
    seen, after = [], ""
    while True:
        page = client.get(f"/v5/spaces?limit=3&after={after}").json
        seen += [space["name"] for space in page["spaces"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == names
    assert client.get("/v5/spaces?limit=1001").status_code == 422


def test_the_stage_spaces_are_untouched_by_named_ones(client):
    client.put("/v5/spaces/tickets", json=TICKETS)
    client.get("/v5/spaces/tickets/random?count=50")
    stats = client.get("/v5/stats").json["types"]
    assert stats["int"]["issued"] == 0 and stats["float"]["issued"] == 0
    assert client.get("/v5/random").status_code == 200


def test_a_store_of_an_earlier_release_gets_its_spaces_table_and_keeps_its_numbers(make_app, instance_path):
    first = make_app(INT_MIN=0, INT_MAX=99, V5_BLOCK_SIZE=10).test_client()
    before = first.get("/v5/random?count=30").json["numbers"]
    connection = sqlite3.connect(instance_path / "v5" / "counters.db")
    connection.execute("DROP TABLE spaces")
    connection.commit()
    connection.close()
    client = make_app(INT_MIN=0, INT_MAX=99, V5_BLOCK_SIZE=10).test_client()
    assert client.put("/v5/spaces/tickets", json=TICKETS).status_code == 201
    after = client.get("/v5/random?count=60").json["numbers"]
    assert not set(before) & set(after)


def test_a_database_of_an_earlier_release_gets_its_spaces_table_and_keeps_its_numbers(make_app, database_url, postgres):
    settings = {"INT_MIN": 0, "INT_MAX": 99, "V5_BLOCK_SIZE": 10, "DATABASE_URL": database_url}
    before = make_app(**settings).test_client().get("/v5/random?count=30").json["numbers"]
    postgres.sql("DROP TABLE uniquerand_v5_spaces", dbname=database_url.rsplit("/", 1)[1])
    client = make_app(**settings).test_client()
    assert client.put("/v5/spaces/tickets", json=TICKETS).status_code == 201
    after = client.get("/v5/random?count=60").json["numbers"]
    assert not set(before) & set(after)
    assert sorted(client.get("/v5/spaces/tickets/random?count=50").json["numbers"]) == list(range(1, 51))


def test_spaces_dropped_from_a_workers_cache_close_their_leases_and_never_repeat(stored):
    stage = next(stage for stage in stored.extensions["uniquerand"]["stages"] if stage.name == "v5")
    stage.named_spaces.cache_size = 2
    client = stored.test_client()
    names = ("a", "b", "c")
    for name in names:
        client.put(f"/v5/spaces/{name}", json={"type": "int", "min": 0, "max": 29})
    served: dict[str, list[int]] = {name: [] for name in names}
    for _ in range(40):
        for name in names:
            response = client.get(f"/v5/spaces/{name}/random?count=2")
            if response.status_code == 200:
                served[name] += response.json["numbers"]
            else:
                assert response.json["code"] in ("space_exhausted", "insufficient_remaining"), response.json
    for name, numbers in served.items():
        assert len(set(numbers)) == len(numbers) and set(numbers) <= set(range(30)), name
        assert client.get(f"/v5/spaces/{name}").json["remaining"] < 2


def named_levels(client) -> dict[tuple[str, str], float]:
    """(metric, space) -> value of the named-space gauges of /metrics, read by prometheus-client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics").get_data(as_text=True)
    return {
        (sample.name, sample.labels["space"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("uniquerand_named_space_")
    }


def test_metrics_give_each_spaces_issued_and_remaining_as_the_space_does(client):
    client.put("/v5/spaces/tickets", json=TICKETS)
    client.put("/v5/spaces/coupons", json={"type": "float", "min": 0, "max": 1, "decimals": 2})
    assert len(client.get("/v5/spaces/tickets/random?count=7").json["numbers"]) == 7
    levels = named_levels(client)
    for name, size in (("tickets", 50), ("coupons", 100)):
        space = client.get(f"/v5/spaces/{name}").json
        issued, remaining = space["issued"], space["remaining"]
        assert (issued + remaining, space["space_size"]) == (size, size), name
        assert levels["uniquerand_named_space_issued", name] == issued, name
        assert levels["uniquerand_named_space_remaining", name] == remaining, name
        assert levels["uniquerand_named_space_size", name] == size, name
    # The whole space of 50 is leased at once (the block is larger): taken, though 43 are not served yet.
    assert levels["uniquerand_named_space_issued", "tickets"] >= 7
    assert levels["uniquerand_named_space_issued", "coupons"] == 0
