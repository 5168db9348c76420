"""Named spaces under real gunicorn: a small space drawn to its end by every worker at once, never a repeat;
one name created by many clients at once is one space; kill -9 between creating and drawing loses nothing."""

from __future__ import annotations

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
    # Every worker (fresh connections spread over all of them) knows the end.
    for _ in range(12):
        status, body, headers = get(server.port, "/v5/spaces/draw/random")
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
