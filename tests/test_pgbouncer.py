"""The PostgreSQL stages behind a real PgBouncer (tests/pgbouncer.py). In transaction pooling a server connection
serves the transactions of many clients in turn, so whatever a connection keeps from one transaction to the
next (prepared statements, settings given at connection start, session locks) reaches another client, or is
missing. With DATABASE_POOLER=pgbouncer the app keeps none: two servers on one PgBouncer of two server
connections (or in session pooling) serve /v3, /v4, /v5, named spaces, signed draws and Idempotency-Key
replays, each number once. A server left at DATABASE_POOLER=none refuses to serve (/readyz 503) and says
which setting to change."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.history import History
from tests.pgbouncer import PgBouncer
from tests.postgres import SMALL_SPACES, start, start_pair
from tests.support import draw_space_to_its_end, get, put_json

pytestmark = pytest.mark.postgres

# Small spaces (3000 numbers of each type), so that a number served twice is likely to show.
SETTINGS = {**SMALL_SPACES, "LOCK_TIMEOUT": 5}


@pytest.fixture
def bouncer(request, database_url):
    mode, ignore_options = getattr(request, "param", ("transaction", False))
    # Session pooling holds a server connection per client connection: 2 servers x 2 workers x 8 of them.
    pooler = PgBouncer(database_url, mode, 2 if mode == "transaction" else 40, ignore_options=ignore_options)
    try:
        pooler.start()
        yield pooler
    finally:
        pooler.stop()


@pytest.mark.parametrize("bouncer", [("transaction", False), ("session", False)], indirect=True, ids=lambda p: p[0])
def test_every_stage_serves_each_number_once_through_pgbouncer(servers, tmp_path, database_url, bouncer):
    url = bouncer.url(database_url.rsplit("/", 1)[1])
    a, b = start_pair(servers, tmp_path, url, {**SETTINGS, "DATABASE_POOLER": "pgbouncer"})
    ports = [a.port, b.port]
    for port in ports:
        status, body, _ = get(port, "/readyz")
        assert status == 200, body

    history = History()
    loads = [threading.Thread(target=history.load, args=(port, "load", 450, ("v3", "v4", "v5"), 8)) for port in ports]
    for thread in loads:
        thread.start()
    for thread in loads:
        thread.join(120)
    failed = [op for op in history.of() if op.outcome != "ok"]
    assert not failed, f"{len(failed)} requests failed, e.g. {failed[:3]}\n{history.summary()}\n{bouncer.log_tail()}"
    history.check()

    # A named space drawn to its end from both servers; signed draws numbered without a gap.
    assert put_json(a.port, "/v5/spaces/bounced", {"type": "int", "min": 1, "max": 400})[0] == 201
    numbers = draw_space_to_its_end(ports, "bounced", 400, concurrency=12)
    assert sorted(numbers) == list(range(1, 401))
    assert put_json(b.port, "/v5/spaces/raffle", {"type": "int", "min": 1, "max": 3000})[0] == 201
    with ThreadPoolExecutor(8) as pool:
        signed = list(pool.map(lambda i: get(ports[i % 2], "/v5/spaces/raffle/random?count=3&signed=true"), range(30)))
    assert all(status == 200 for status, _, _ in signed), signed[:3]
    assert sorted(body["serial"] for _, body, _ in signed) == list(range(1, 31))
    assert get(a.port, "/v5/spaces/raffle/draws/30")[0] == 200

    # A keyed draw recorded through one server is replayed by the other.
    key = {"Idempotency-Key": "bounced-1"}
    first = get(a.port, "/v5/random?count=3", headers=key)
    again = get(b.port, "/v5/random?count=3", headers=key)
    assert first[0] == again[0] == 200 and again[2].get("idempotent-replayed") == "true"
    assert json.dumps(first[1]) == json.dumps(again[1])


@pytest.mark.parametrize(
    ("bouncer", "told"),
    [(("transaction", False), "refuses the settings"), (("transaction", True), "lack the settings")],
    indirect=["bouncer"],
    ids=["options-refused", "options-dropped"],
)
def test_a_server_not_told_of_pgbouncer_refuses_to_serve_and_names_the_setting(
    servers, tmp_path, database_url, bouncer, told
):
    """PgBouncer refuses a connection that gives settings at its start, or (ignore_startup_parameters) drops
    them: without them, a statement could wait for a lock past its request's end. Either way the stages answer
    503 JSON that names DATABASE_POOLER, and never serve."""
    server = start(servers, tmp_path / "instance", bouncer.url(database_url.rsplit("/", 1)[1]), SETTINGS)
    status, body, _ = get(server.port, "/readyz")
    assert status == 503, body
    for stage in ("v3", "v4", "v5"):
        status, body, headers = get(server.port, f"/{stage}/random")
        assert (status, body["code"]) == (503, "store_unavailable"), body
        assert told in body["error"] and "UNIQUERAND_DATABASE_POOLER=pgbouncer" in body["error"], body
        assert "retry-after" in headers
