"""Idempotency-Key on /v5's draws, black-box over real gunicorn: a retry gets the first answer back byte for byte
and issues nothing; identical requests at once issue once; a worker killed after recording its answer leaves it
to be replayed, one killed before recording leaves a claim that a later retry takes over; another host on the
same PostgreSQL replays it too. "Issues nothing" is checked by drawing the small space to its end afterwards:
every number not in the keyed answer comes out once, and nothing is missing."""

from __future__ import annotations

import contextlib
import http.client
import json
import sqlite3
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests.postgres import start_pair
from tests.support import draw_space_to_its_end, get, put_json

SIZE = 200
# Small leases, so that the workers' own draws use several and a repeat or a gap shows at once.
SETTINGS = {"UNIQUERAND_V5_BLOCK_SIZE": "7"}


def raw_get(port: int, path: str, key: str | None) -> tuple[int, bytes, dict[str, str]]:
    """One GET on a fresh connection, the body as bytes (a replay must be the same bytes)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={} if key is None else {"Idempotency-Key": key})
        response = connection.getresponse()
        return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


def new_space(port: int, name: str, size: int = SIZE) -> None:
    assert put_json(port, f"/v5/spaces/{name}", {"type": "int", "min": 1, "max": size})[0] == 201


def assert_rest_is_everything_else(ports: list[int], name: str, answered: list[int], size: int = SIZE) -> None:
    rest = draw_space_to_its_end(ports, name, size - len(answered))
    served = Counter(rest + answered)
    assert not [n for n, times in served.items() if times > 1], "a number was served twice"
    assert sorted(served) == list(range(1, size + 1)), f"{size - len(served)} numbers were issued and never sent"


def test_a_retry_gets_the_same_bytes_and_issues_nothing(make_server):
    server = make_server(workers=3, env=SETTINGS)
    new_space(server.port, "retry")
    status, first, headers = raw_get(server.port, "/v5/spaces/retry/random?count=10", "order-17")
    assert status == 200 and "idempotent-replayed" not in headers
    # Fresh connections: the retries reach every worker.
    for _ in range(15):
        status, body, headers = raw_get(server.port, "/v5/spaces/retry/random?count=10", "order-17")
        assert (status, body, headers["idempotent-replayed"]) == (200, first, "true")
    assert_rest_is_everything_else([server.port], "retry", json.loads(first)["numbers"])


def test_the_stage_space_replays_too_and_a_key_is_tied_to_its_request(make_server):
    server = make_server(workers=2, env=SETTINGS)
    status, first, _ = raw_get(server.port, "/v5/random?type=float", "k")
    assert status == 200
    assert raw_get(server.port, "/v5/random?type=float", "k")[1] == first
    for other in ("/v5/random", "/v5/random?type=float&count=1", "/v5/spaces/any/random"):
        status, body, _ = raw_get(server.port, other, "k")
        assert status == 422 and b'"code":"idempotency_key_reused"' in body, (other, body)
    # Without the header nothing changes; the seed's stages ignore it.
    assert raw_get(server.port, "/v5/random?type=float", None)[1] != first
    assert raw_get(server.port, "/v4/random", "k")[0] == 200


def test_bad_keys_are_refused_before_anything_is_issued(make_server):
    server = make_server(workers=1, env=SETTINGS)
    new_space(server.port, "bad", size=3)
    for key in ("", "a b", "x" * 256, "caf\u00e9".encode().decode("latin-1")):
        status, body, _ = raw_get(server.port, "/v5/spaces/bad/random", key)
        assert status == 422 and b'"parameter":"Idempotency-Key"' in body, (key, body)
    assert sorted(get(server.port, "/v5/spaces/bad/random?count=3")[1]["numbers"]) == [1, 2, 3]


def test_an_error_is_not_recorded_a_retry_issues_once_the_cause_is_gone(make_server):
    server = make_server(workers=2, env=SETTINGS)
    assert raw_get(server.port, "/v5/spaces/later/random", "early")[0] == 404
    new_space(server.port, "later", size=5)
    status, _, headers = raw_get(server.port, "/v5/spaces/later/random", "early")
    assert status == 200 and "idempotent-replayed" not in headers


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request) -> dict[str, str]:
    """The store's settings: SQLite files, or a PostgreSQL database of the test's own."""
    if request.param == "sqlite":
        return {}
    return {"UNIQUERAND_DATABASE_URL": request.getfixturevalue("database_url")}


def test_identical_requests_at_once_issue_once(make_server, engine):
    server = make_server(workers=3, env={**SETTINGS, **engine})
    new_space(server.port, "burst")
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda _: raw_get(server.port, "/v5/spaces/burst/random?count=5", "once"), range(48)))
    bodies = {body for status, body, _ in answers if status == 200}
    assert len(bodies) == 1, bodies
    others = Counter((status, body) for status, body, _ in answers if status != 200)
    assert all(status == 409 and b"request_in_progress" in body for status, body in others), others
    assert_rest_is_everything_else([server.port], "burst", json.loads(bodies.pop())["numbers"])


def test_identical_draws_of_the_stage_space_at_once_send_one_answer(make_server, engine):
    # /v5/random's short way: every request may draw, but only the first answer recorded is ever sent.
    server = make_server(workers=3, env={**SETTINGS, **engine})
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda _: raw_get(server.port, "/v5/random?count=5", "same"), range(48)))
    assert {status for status, _, _ in answers} == {200}, answers
    bodies = {body for _, body, _ in answers}
    assert len(bodies) == 1, bodies
    fresh = [headers for _, _, headers in answers if "idempotent-replayed" not in headers]
    assert len(fresh) == 1, f"{len(fresh)} responses claim to be the first"


def test_kill_9_around_recording_a_stage_draw(make_server, engine):
    server = make_server(workers=2, env={**SETTINGS, **engine}, app="tests.crash_app:app")
    # Killed before its one write: nothing of it is in the store, no claim to wait out; the retry issues at once.
    with contextlib.suppress(http.client.HTTPException, OSError):
        raw_get(server.port, "/v5/random?count=4", "die-before-record-2")
    status, body, headers = raw_get(server.port, "/v5/random?count=4", "die-before-record-2")
    assert status == 200 and "idempotent-replayed" not in headers
    assert raw_get(server.port, "/v5/random?count=4", "die-before-record-2")[1] == body
    # Killed after it: the retry replays what was recorded and never sent.
    with pytest.raises((http.client.HTTPException, OSError)):
        raw_get(server.port, "/v5/random?count=4", "die-after-record-2")
    status, body, headers = raw_get(server.port, "/v5/random?count=4", "die-after-record-2")
    assert status == 200 and headers["idempotent-replayed"] == "true" and len(json.loads(body)["numbers"]) == 4


def test_kill_9_after_recording_the_retry_replays_the_recorded_answer(make_server):
    server = make_server(workers=2, env=SETTINGS, app="tests.crash_app:app")
    new_space(server.port, "crash")
    try:
        raw_get(server.port, "/v5/spaces/crash/random?count=4", "die-after-record-1")
        raise AssertionError("the worker answered instead of dying")
    except (http.client.HTTPException, OSError):
        pass
    status, body, headers = raw_get(server.port, "/v5/spaces/crash/random?count=4", "die-after-record-1")
    assert status == 200 and headers["idempotent-replayed"] == "true"
    numbers = json.loads(body)["numbers"]
    # The dead worker's unserved lease is a gap (never served): every served number is unique, the replayed ones
    # among them, and the rest is what was left.
    rest, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline:
        status, answer, _ = get(server.port, "/v5/spaces/crash/random")
        if status != 200:
            assert answer["code"] in ("space_exhausted", "held_elsewhere"), answer
            if answer["code"] == "space_exhausted":
                break
            time.sleep(0.2)
            continue
        rest.append(answer["number"])
    assert answer["code"] == "space_exhausted"
    assert not set(rest) & set(numbers) and len(set(rest)) == len(rest)


def test_a_claim_whose_worker_died_before_recording_is_taken_over(make_server, engine):
    # LOCK_TIMEOUT 0.5: a claim counts as abandoned after 3 s.
    env = {**SETTINGS, **engine, "UNIQUERAND_LOCK_TIMEOUT": "0.5"}
    server = make_server(workers=2, env=env, app="tests.crash_app:app")
    new_space(server.port, "orphan", size=20)
    with contextlib.suppress(http.client.HTTPException, OSError):
        raw_get(server.port, "/v5/spaces/orphan/random?count=3", "die-before-record-1")
    status, body, headers = raw_get(server.port, "/v5/spaces/orphan/random?count=3", "die-before-record-1")
    assert status == 409 and b"request_in_progress" in body and headers["retry-after"] == "1"
    time.sleep(3.2)
    status, taken, headers = raw_get(server.port, "/v5/spaces/orphan/random?count=3", "die-before-record-1")
    assert status == 200 and "idempotent-replayed" not in headers
    status, body, headers = raw_get(server.port, "/v5/spaces/orphan/random?count=3", "die-before-record-1")
    assert (status, body, headers["idempotent-replayed"]) == (200, taken, "true")


def test_a_write_of_unknown_outcome_keeps_the_claim_so_a_retry_waits_instead_of_issuing(make_server):
    server = make_server(workers=2, env={**SETTINGS, "UNIQUERAND_LOCK_TIMEOUT": "0.5"}, app="tests.crash_app:app")
    new_space(server.port, "busy-once", size=20)
    status, body, headers = raw_get(server.port, "/v5/spaces/busy-once/random?count=2", "unknown-1")
    assert status == 503 and b"store_busy" in body and "retry-after" in headers
    # Had its write landed (a signed draw kept under a serial), issuing at once would make a second one.
    status, body, headers = raw_get(server.port, "/v5/spaces/busy-once/random?count=2", "unknown-1")
    assert status == 409 and b"request_in_progress" in body and headers["retry-after"] == "1"
    time.sleep(3.2)
    status, taken, headers = raw_get(server.port, "/v5/spaces/busy-once/random?count=2", "unknown-1")
    assert status == 200 and "idempotent-replayed" not in headers
    assert raw_get(server.port, "/v5/spaces/busy-once/random?count=2", "unknown-1")[1] == taken


def test_expired_answers_issue_anew_and_are_purged(make_server, instance_path, engine):
    server = make_server(workers=1, env={**SETTINGS, **engine, "UNIQUERAND_IDEMPOTENCY_TTL": "1"})
    first = raw_get(server.port, "/v5/random?count=2", "short")[1]
    time.sleep(1.2)
    status, again, headers = raw_get(server.port, "/v5/random?count=2", "short")
    assert status == 200 and again != first and "idempotent-replayed" not in headers
    for i in range(300):
        assert raw_get(server.port, "/v5/random", f"bulk-{i}")[0] == 200
    time.sleep(1.2)
    for i in range(300):
        assert raw_get(server.port, "/v5/random", f"next-{i}")[0] == 200
    if engine:
        with psycopg.connect(engine["UNIQUERAND_DATABASE_URL"]) as connection:
            rows = connection.execute("SELECT count(*) FROM uniquerand_v5_replies").fetchone()[0]
    else:
        with sqlite3.connect(instance_path / "v5" / "replies.db") as connection:
            rows = connection.execute("SELECT count(*) FROM replies").fetchone()[0]
    # 602 rows were written, the first 302 expired before the purges among the next 300 claims.
    assert rows <= 302, rows


def test_a_retry_on_another_host_replays_and_a_reused_key_is_refused_there(servers, tmp_path, database_url):
    a, b = start_pair(servers, tmp_path, database_url, {"V5_BLOCK_SIZE": 7})
    new_space(a.port, "hosts")
    status, first, _ = raw_get(a.port, "/v5/spaces/hosts/random?count=6", "invoice-9")
    assert status == 200
    status, body, headers = raw_get(b.port, "/v5/spaces/hosts/random?count=6", "invoice-9")
    assert (status, body, headers["idempotent-replayed"]) == (200, first, "true")
    assert raw_get(b.port, "/v5/spaces/hosts/random?count=7", "invoice-9")[0] == 422
    with ThreadPoolExecutor(16) as pool:
        ports = [a.port, b.port] * 12
        answers = list(pool.map(lambda p: raw_get(p, "/v5/spaces/hosts/random?count=3", "both"), ports))
    bodies = {body for status, body, _ in answers if status == 200}
    assert len(bodies) == 1 and all(s in (200, 409) for s, _, _ in answers)
    answered = json.loads(first)["numbers"] + json.loads(bodies.pop())["numbers"]
    assert_rest_is_everything_else([a.port, b.port], "hosts", answered)
