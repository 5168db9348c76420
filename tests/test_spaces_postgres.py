"""Named spaces on PostgreSQL across hosts: two real gunicorn servers (instance folders of their own, one key)
on one database. A name created from both at once is one space; a space made on one host is drawn from both at
once to its last number, each number once; both then know its end."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from tests.postgres import start_pair
from tests.support import draw_space_to_its_end, get, put_json

SIZE = 2000
SETTINGS = {"V5_BLOCK_SIZE": 25}


def test_two_hosts_create_one_space_and_draw_it_to_its_end_without_a_repeat(servers, tmp_path, database_url):
    a, b = start_pair(servers, tmp_path, database_url, SETTINGS)
    definition = {"type": "int", "min": 1, "max": SIZE}
    ports = [a.port, b.port] * 24
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda port: put_json(port, "/v5/spaces/draw", definition), ports))
    statuses = Counter(status for status, _ in answers)
    assert statuses == {201: 1, 200: 47}, statuses
    assert len({tuple(sorted(body.items())) for _, body in answers}) == 1

    numbers = draw_space_to_its_end([a.port, b.port], "draw", SIZE, concurrency=16)
    repeated = [number for number, times in Counter(numbers).items() if times > 1]
    assert not repeated, f"{len(repeated)} numbers were served twice"
    assert sorted(numbers) == list(range(1, SIZE + 1))
    for server in (a, b):
        status, body, headers = get(server.port, "/v5/spaces/draw/random")
        assert (status, body["code"]) == (503, "space_exhausted") and "retry-after" not in headers
        assert get(server.port, "/v5/spaces/draw")[1]["remaining"] == 0


def test_a_space_made_on_one_host_is_listed_and_drawn_on_the_other(servers, tmp_path, database_url):
    a, b = start_pair(servers, tmp_path, database_url, SETTINGS)
    assert put_json(a.port, "/v5/spaces/odds", {"type": "float", "min": 0, "max": 1, "decimals": 2})[0] == 201
    status, listed, _ = get(b.port, "/v5/spaces")
    assert status == 200 and [space["name"] for space in listed["spaces"]] == ["odds"]
    first = get(b.port, "/v5/spaces/odds/random?count=60")[1]["numbers"]
    second = get(a.port, "/v5/spaces/odds/random?count=40")[1]["numbers"]
    assert sorted(round(number * 100) for number in first + second) == list(range(100))
    # /v5's own spaces are untouched by the named one's draws.
    assert get(a.port, "/v5/stats")[1]["types"]["int"]["issued"] == 0
