"""Named spaces under real gunicorn: a small space drawn to its end by every worker at once, never a repeat;
one name created by many clients at once is one space; kill -9 between creating and drawing loses nothing."""

from __future__ import annotations

import time
from collections import Counter

from tests.support import draw_space_to_its_end, get, hammer, put_json

SIZE = 2000


def test_every_worker_draws_one_small_space_to_its_end_without_a_repeat(make_server):
    server = make_server(workers=3, env={"UNIQUERAND_V5_BLOCK_SIZE": "50"})
    assert put_json(server.port, "/v5/spaces/draw", {"type": "int", "min": 1, "max": SIZE})[0] == 201
    numbers = draw_space_to_its_end([server.port], "draw", SIZE)
    repeated = [number for number, times in Counter(numbers).items() if times > 1]
    assert not repeated, f"{len(repeated)} numbers were served twice"
    assert sorted(numbers) == list(range(1, SIZE + 1))
    # Every worker (fresh connections spread over all of them) knows the end. A worker records that it
    # finished its last lease in the background: until that lands, the others answer held_elsewhere.
    deadline = time.monotonic() + 15
    for _ in range(12):
        while True:
            status, body, headers = get(server.port, "/v5/spaces/draw/random")
            if body.get("code") != "held_elsewhere" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert (status, body["code"]) == (503, "space_exhausted") and "retry-after" not in headers
    assert get(server.port, "/v5/spaces/draw")[1]["remaining"] == 0


def test_one_name_created_by_many_clients_at_once_is_one_space(make_server):
    server = make_server(workers=3)
    definition = {"type": "float", "min": 0, "max": 1, "decimals": 3}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: put_json(server.port, "/v5/spaces/race", definition), range(48)))
    statuses = Counter(status for status, _ in answers)
    assert statuses == {201: 1, 200: 47}, statuses
    assert len({tuple(sorted(body.items())) for _, body in answers}) == 1


def test_kill_9_after_creating_and_drawing_loses_no_space_and_repeats_nothing(make_server):
    server = make_server(workers=2, env={"UNIQUERAND_V5_BLOCK_SIZE": "20"})
    put_json(server.port, "/v5/spaces/crash", {"type": "int", "min": 0, "max": 499})
    put_json(server.port, "/v5/spaces/fresh", {"type": "int", "min": 0, "max": 9})
    before = [
        body["number"] for status, body in hammer(server.port, ["/v5/spaces/crash/random"] * 200) if status == 200
    ]
    server.kill9()
    server = make_server(workers=2, env={"UNIQUERAND_V5_BLOCK_SIZE": "20"})
    assert get(server.port, "/v5/spaces/fresh")[1]["space_size"] == 10
    assert sorted(get(server.port, "/v5/spaces/fresh/random?count=10")[1]["numbers"]) == list(range(10))
    after = []
    for status, body in hammer(server.port, ["/v5/spaces/crash/random"] * 400):
        if status == 200:
            after.append(body["number"])
        else:
            assert body["code"] in ("space_exhausted", "held_elsewhere"), body
    assert len(before) == 200 and not set(before) & set(after) and len(set(after)) == len(after)


def test_every_worker_and_metrics_report_one_issued_count_per_space(make_server):
    from tests.test_metrics import samples, scrape

    server = make_server(workers=3, env={"UNIQUERAND_V5_BLOCK_SIZE": "10"})
    assert put_json(server.port, "/v5/spaces/counted", {"type": "int", "min": 0, "max": 999})[0] == 201
    hammer(server.port, ["/v5/spaces/counted/random?count=3"] * 60)
    # Fresh connections reach every worker: each reads the one counter, not its own share. A lease taken ahead
    # in the background may still move the counter just after the draws: read until a round agrees (a worker
    # that answered its own share never would).
    deadline = time.monotonic() + 15
    while True:
        answers = {
            (body["issued"], body["remaining"])
            for _, body, _ in (get(server.port, "/v5/spaces/counted") for _ in range(12))
        }
        if len(answers) == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(answers) == 1, answers
    ((issued, remaining),) = answers
    assert issued >= 180 and issued + remaining == 1000
    # A worker's levels are at most a few seconds old: they converge on the counter once the draws stop.
    deadline = time.monotonic() + 30
    while True:
        levels = samples(scrape(server.port))
        key = (("space", "counted"), ("stage", "v5"), ("type", "int"))
        found = (
            levels.get(("uniquerand_named_space_issued", key)),
            levels.get(("uniquerand_named_space_remaining", key)),
        )
        if found == (issued, remaining) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert found == (issued, remaining)


def test_a_chunked_body_over_4_kib_is_413_json_and_creates_nothing(make_server):
    import http.client
    import json

    server = make_server(workers=1)
    definition = json.dumps({"type": "int", "min": 0, "max": 9, "padding": " " * 8000}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        # No Content-Length: the body arrives in chunks, so only reading it can find its size.
        connection.request(
            "PUT", "/v5/spaces/big", body=iter([definition[:100], definition[100:]]), encode_chunked=True
        )
        response = connection.getresponse()
        assert response.status == 413 and json.loads(response.read())["code"] == "request_entity_too_large"
    finally:
        connection.close()
    assert get(server.port, "/v5/spaces/big")[0] == 404
    small = json.dumps({"type": "int", "min": 0, "max": 9}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("PUT", "/v5/spaces/small", body=iter([small]), encode_chunked=True)
        assert connection.getresponse().status == 201
    finally:
        connection.close()
