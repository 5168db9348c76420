"""/v3, /v4 and /v5 on PostgreSQL end to end: real gunicorn servers (separate instance folders, several workers)
sharing one database of the suite's real server (tests/postgres.py), under concurrent load on fresh connections.
Never a number twice across servers; every number of a small space once, then `space_exhausted` everywhere; the
server restarted or away mid-load; a COMMIT whose answer is lost; a database unreachable or out of connections;
a query waiting for a lock that does not stop a gevent worker's other requests. Every request is recorded
(tests/history.py) and every error checked: its status, its JSON body, Retry-After exactly when a retry may help.
"""

from __future__ import annotations

import contextlib
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.history import KINDS, History, Operation
from tests.postgres import (
    SMALL_SPACES,
    Cluster,
    give_key,
    require_local_cluster,
    start,
    start_pair,
    wait_for_setting,
)
from tests.support import GunicornServer, free_port, get

STAGES = ("v3", "v4", "v5")
SMALL = SMALL_SPACES
# 300 ints (1..300) and 300 floats (0.00..2.99), served to the last one.
TINY = {
    "INT_MIN": 1,
    "INT_MAX": 300,
    "FLOAT_MIN": 0,
    "FLOAT_MAX": 3,
    "FLOAT_DECIMALS": 2,
    "MAX_COUNT": 10,
    "V4_SHARD_SIZE": 100,
    "V5_BLOCK_SIZE": 10,
}
# The first code of each kind in TINY: a float's code is its value in hundredths.
TINY_LOW = {"int": 1, "float": 0}
# No request takes longer to answer (the stores give up after LOCK_TIMEOUT): past it, a hang.
CLIENT_TIMEOUT = 20.0
RETRYABLE = {"store_busy", "store_unavailable", "retries_exhausted", "held_elsewhere", "shards_empty"}
# The one error a healthy stage answers before its end: /v4's pools being refilled.
HEALTHY = {"v3": set(), "v4": {"shards_empty"}, "v5": set()}
# What a stage may answer at the end of its space besides 200 (docs/stages.md, "The end of a space").
END_OF_SPACE = {
    # Several writers race for the last free codes: a single that keeps losing answers retries_exhausted, a
    # batch that meets another transaction's claims in flight may wait for them, or deadlock: store_busy.
    "v3": {"space_exhausted", "insufficient_remaining", "retries_exhausted", "store_busy"},
    "v4": {"space_exhausted", "insufficient_remaining", "shards_empty"},
    "v5": {"space_exhausted", "insufficient_remaining", "held_elsewhere"},
}
# Where a stage records its int codes (/v4: the ledger of every code ever pooled).
RECORDS = {"v3": "uniquerand_v3", "v4": "uniquerand_v4_ledger"}


def dbname(url: str) -> str:
    return url.rsplit("/", 1)[1]


def assert_json_error(status: int | None, body: Any, headers: dict, codes: set[str], expected: int = 503) -> None:
    """An error answer: the `expected` status, a JSON body with a message and one of `codes`, and Retry-After
    exactly when a retry may succeed."""
    context = (status, body, headers)
    assert status == expected, context
    assert headers.get("content-type") == "application/json", context
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], context
    assert body.get("code") in codes, context
    if body["code"] in RETRYABLE:
        assert headers.get("retry-after") == "1", context
    else:
        assert "retry-after" not in headers, context


def assert_op_error(op: Operation, codes: set[str]) -> None:
    assert op.outcome == "error", op
    assert_json_error(op.status, op.body, op.headers, codes)


def assert_answered(history: History, allowed: dict[str, set[str]], phase: str | None = None) -> None:
    """Every request (of `phase`) was answered: a 200, or a JSON error its stage may give."""
    for op in history.of(phase):
        assert op.outcome != "lost", op
        if op.outcome == "error":
            assert_op_error(op, allowed[op.stage])


def answers(history: History) -> Counter:
    """How many requests got each answer: 200, or the error's code."""
    return Counter(op.status if op.outcome == "ok" else (op.body or {}).get("code", op.outcome) for op in history.of())


def served(history: History, stage: str, kind: str, phase: str | None = None) -> list:
    return [n for op in history.of(phase, stage) if op.kind == kind and op.outcome == "ok" for n in op.numbers]


def ask(history: History, port: int, stage: str, kind: str, phase: str, count: int | None = None) -> Operation:
    """One request, retried while /v4 says its pools are being refilled (as its Retry-After invites)."""
    deadline = time.monotonic() + 30
    while True:
        op = history.request(port, stage, kind, phase, count, timeout=CLIENT_TIMEOUT)
        if op.outcome != "error" or op.body.get("code") != "shards_empty" or time.monotonic() > deadline:
            return op
        time.sleep(0.02)


def run_plan(history: History, plan: list[tuple], concurrency: int = 16) -> None:
    """Requests (port, stage, kind, phase, count) from `concurrency` threads, each on a fresh connection."""
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda item: ask(history, *item), plan))


def drain(
    history: History, servers: list[GunicornServer], stage: str, kinds=("int",), per_port: int = 8, seconds=10.0
) -> bool:
    """Single numbers of `kinds` from every server, rounds of `per_port` per server and kind at once on fresh
    connections, until a round is answered `space_exhausted` throughout and every worker of every server has
    answered it (its log says so: a worker that never gets a request proves nothing); False if not within
    `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        plan = [(server.port, kind) for server in servers for kind in kinds for _ in range(per_port)]
        with ThreadPoolExecutor(len(plan)) as pool:
            ops = list(pool.map(lambda item: history.request(item[0], stage, item[1], "drain"), plan))
        if all(op.outcome == "error" and op.body.get("code") == "space_exhausted" for op in ops) and all(
            set(server.worker_pids()) <= exhausted_workers(server, stage) for server in servers
        ):
            return True
        if any(op.outcome != "ok" for op in ops):
            time.sleep(0.1)  # as Retry-After invites, shortened
    return False


def exhausted_workers(server: GunicornServer, stage: str) -> set[int]:
    """The workers of `server` that answered `space_exhausted` on `stage`, from their log lines."""
    pattern = re.compile(rf"\bpid=(\d+) .*\bcode=space_exhausted .*\bpath=/{stage}/random\b")
    return {int(match[1]) for match in pattern.finditer(server.log_path.read_text(errors="replace"))}


def open_leases(cluster: Cluster, url: str) -> list[tuple]:
    """/v5's open leases (kind, start, stop, holder), for failure messages."""
    return cluster.sql("SELECT kind, start, stop, holder FROM uniquerand_v5_leases WHERE open", dbname(url))


def recorded_outside(cluster: Cluster, url: str, stage: str, kind: str, size: int) -> list[int]:
    """The codes of `kind` a stage recorded outside its space of codes 0..size-1 offset by the kind's low (/v3's
    table, /v4's ledger; /v5 records counters, not codes)."""
    if stage not in RECORDS:
        return []
    low = TINY_LOW[kind]
    query = f"SELECT code FROM {RECORDS[stage]}_{kind} WHERE code NOT BETWEEN %s AND %s ORDER BY code"
    return [code for (code,) in cluster.sql(query, dbname(url), params=[low, low + size - 1])]


def assert_no_unhandled_errors(*servers: GunicornServer) -> None:
    for server in servers:
        log = server.log_path.read_text(errors="replace")
        assert "unhandled_error" not in log and "code=internal_error" not in log, server.log()


@contextlib.contextmanager
def locked(url: str, *tables: str) -> Iterator[None]:
    """`tables` locked ACCESS EXCLUSIVE by an open transaction of the test's own, rolled back afterwards."""
    # Imported here, as tests/postgres.py does: psycopg picks its wait function when imported (PERF-NOTES.md).
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as connection:
        connection.execute(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            connection.rollback()


def wait_for_lock_waiters(cluster: Cluster, url: str, count: int) -> None:
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'"
    deadline = time.monotonic() + 20
    while cluster.sql(query, params=[dbname(url)])[0][0] < count:
        assert time.monotonic() < deadline, f"fewer than {count} requests ever waited for the test's lock"
        time.sleep(0.02)


def in_thread(function, *args) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(function(*args)), daemon=True)
    thread.start()
    return thread, result


# 1. Two servers, one database.


def test_two_servers_on_one_database_never_serve_a_number_twice(servers, tmp_path, database_url):
    a = start(servers, tmp_path / "a" / "instance", database_url, SMALL)
    # A's workers made /v5's key at their start (the database's first use), readable by its owner only.
    assert (a.instance_path / "v5" / "key").stat().st_mode & 0o777 == 0o600
    history = History()
    assert history.request(a.port, "v5", "int", "first").outcome == "ok"

    # B without the key: it refuses /v5 (the database is served with a key it lacks) and makes none of its own.
    b_instance = tmp_path / "b" / "instance"
    b = start(servers, b_instance, database_url, SMALL)
    status, body, headers = b.get("/v5/random")
    assert_json_error(status, body, headers, {"store_key_invalid"}, expected=500)
    assert "copy the key file" in body["error"]
    assert not (b_instance / "v5" / "key").exists()
    assert history.request(b.port, "v3", "int", "first").outcome == "ok"  # its other stages serve
    b.stop(graceful=False)

    give_key(a, b_instance)
    b = start(servers, b_instance, database_url, SMALL)
    # Per server, stage and type: 120 single numbers and 30 batches of 20, shuffled: 1440 of 3000 per type.
    plan = [
        (server.port, stage, kind, phase, count)
        for server, phase in ((a, "load a"), (b, "load b"))
        for stage in STAGES
        for kind in KINDS
        for count in [None] * 120 + [20] * 30
    ]
    random.Random(1).shuffle(plan)
    run_plan(history, plan)

    history.check()
    assert_answered(history, HEALTHY)
    for stage in STAGES:
        for kind in KINDS:
            numbers = served(history, stage, kind)
            # The plan's, and the first /v3 and /v5 ints.
            assert len(numbers) == len(set(numbers)) == 1440 + (kind == "int" and stage != "v4"), (stage, kind)
            assert all(0 <= number <= (3000 if kind == "int" else 3) for number in numbers)
            assert len(served(history, stage, kind, "load a")) == len(served(history, stage, kind, "load b")) == 720
    # Each server reads the records of both: its count is what both served.
    for stage in ("v3", "v4"):
        for server in (a, b):
            status, body, _ = server.get(f"/{stage}/stats")
            assert status == 200
            issued = {kind: body["types"][kind]["issued"] for kind in KINDS}
            assert issued == {kind: len(served(history, stage, kind)) for kind in KINDS}
    assert_no_unhandled_errors(a, b)


# 2. A small space served to its end.


@pytest.mark.parametrize("stage", STAGES)
def test_two_servers_serve_a_small_space_to_its_last_number_then_exhausted(
    servers, tmp_path, database_url, postgres, stage
):
    a, b = start_pair(servers, tmp_path, database_url, TINY)
    history = History()
    # More than each space, singles and batches of 5 of both types, from both servers at once.
    plan = [
        (server.port, stage, kind, "bulk", count)
        for server in (a, b)
        for kind in KINDS
        for count in [None] * 80 + [5] * 16
    ]
    random.Random(2).shuffle(plan)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: history.request(*item, CLIENT_TIMEOUT), plan))
    # Then single numbers until both say the end everywhere (a worker holding /v5 numbers serves them first).
    exhausted = drain(history, [a, b], stage, KINDS, per_port=6)

    evidence = [
        f"answers {answers(history)}; workers {a.worker_pids()} {b.worker_pids()}, of which answered "
        f"space_exhausted: {exhausted_workers(a, stage) | exhausted_workers(b, stage)}"
    ]
    space = {kind: set(range(TINY_LOW[kind], TINY_LOW[kind] + 300)) for kind in KINDS}
    codes = {kind: [round(n * 100) if kind == "float" else n for n in served(history, stage, kind)] for kind in KINDS}
    for kind in KINDS:
        evidence.append(
            f"{kind}: {len(codes[kind])} served, missing {sorted(space[kind] - set(codes[kind]))}, outside the "
            f"space {sorted(set(codes[kind]) - space[kind])}, recorded outside the space "
            f"{recorded_outside(postgres, database_url, stage, kind, 300)}"
        )
    evidence.append(f"open /v5 leases {open_leases(postgres, database_url)}")
    assert exhausted, f"/{stage} never answered space_exhausted everywhere: {'; '.join(evidence)}"
    history.check()
    for kind in KINDS:
        assert sorted(codes[kind]) == sorted(space[kind]), "; ".join(evidence)
    assert_answered(history, {stage: END_OF_SPACE[stage]})
    for server in (a, b):
        for query in ("", "?type=float", "?count=2"):
            status, body, headers = server.get(f"/{stage}/random{query}", CLIENT_TIMEOUT)
            assert_json_error(status, body, headers, {"space_exhausted", "insufficient_remaining"})
    assert_no_unhandled_errors(a, b)


# 3. The database restarted, then away, mid-load.


def test_database_restart_and_outage_mid_load_answer_503_then_service_resumes(servers, tmp_path, database_url):
    cluster = require_local_cluster()
    server = start(servers, tmp_path / "instance", database_url, {**SMALL, "LOCK_TIMEOUT": 2})
    history = History()
    faulty = {stage: {"store_unavailable", "store_busy", "shards_empty"} for stage in STAGES}

    def load_in_background(phase: str, requests: int) -> tuple[threading.Thread, threading.Event]:
        stop = threading.Event()
        options = {"stages": STAGES, "stop": stop, "timeout": CLIENT_TIMEOUT, "concurrency": 8}
        thread = threading.Thread(target=history.load, args=(server.port, phase, requests), kwargs=options)
        thread.start()
        deadline = time.monotonic() + 20
        while len(history.of(phase)) < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        return thread, stop

    def finish(thread: threading.Thread, stop: threading.Event) -> None:
        stop.set()
        thread.join(60)
        assert not thread.is_alive(), "the load did not end: a request hung"

    history.load(server.port, "before", 90, stages=STAGES, timeout=CLIENT_TIMEOUT)

    thread, stop = load_in_background("restart", 300)
    try:
        cluster.restart_immediate()
        thread.join(60)
    finally:
        finish(thread, stop)

    thread, stop = load_in_background("outage", 5000)
    try:
        with cluster.unavailable():
            down = time.monotonic()
            # Requests that must reach the database; /v5's asks for more than a worker holds (a new lease).
            plan = [(stage, kind, count) for stage, count in (("v3", None), ("v4", None), ("v5", 50)) for kind in KINDS]
            with ThreadPoolExecutor(len(plan)) as pool:
                probes = list(
                    pool.map(
                        lambda item: history.request(server.port, *item[:2], "down", item[2], CLIENT_TIMEOUT), plan
                    )
                )
            time.sleep(max(0.0, 2.0 - (time.monotonic() - down)))
    finally:
        finish(thread, stop)
    for op in probes:
        assert_op_error(op, {"store_unavailable", "store_busy"})

    # Back without a restart of gunicorn: every stage and type answers 200 again.
    deadline = time.monotonic() + 30
    pending = {(stage, kind) for stage in STAGES for kind in KINDS}
    while pending and time.monotonic() < deadline:
        for stage, kind in sorted(pending):
            if history.request(server.port, stage, kind, "recovering", timeout=CLIENT_TIMEOUT).outcome == "ok":
                pending.discard((stage, kind))
        time.sleep(0.05)
    assert not pending, f"no recovery: {sorted(pending)}"
    history.load(server.port, "after", 90, stages=STAGES, timeout=CLIENT_TIMEOUT)

    history.check()
    assert_answered(history, HEALTHY, "before")
    assert_answered(history, HEALTHY, "after")
    for phase in ("restart", "outage", "down", "recovering"):
        assert_answered(history, faulty, phase)
    assert any(op.outcome == "error" for op in history.of("outage")), "the load never saw the outage"
    # Every number served was durable first: /v3's table and /v4's ledger hold it after the crash.
    for stage, table in RECORDS.items():
        recorded = {code for (code,) in cluster.sql(f"SELECT code FROM {table}_int", dbname(database_url))}
        assert set(served(history, stage, "int")) <= recorded
    assert_no_unhandled_errors(server)


# 4. A COMMIT whose answer is lost.


@pytest.mark.parametrize("stage", STAGES)
def test_a_commit_whose_answer_is_lost_answers_503_and_is_never_served(servers, tmp_path, database_url, stage):
    """COMMIT waits for a standby that never comes, then the session is cut off: the transaction committed,
    but the request cannot know it. It answers 503, and what it recorded is never served by anyone."""
    cluster = require_local_cluster()
    settings = {**TINY, "MAX_COUNT": 60, "V5_BLOCK_SIZE": 20, "LOCK_TIMEOUT": 30}
    server = start(servers, tmp_path / "instance", database_url, settings)
    history = History()
    run_plan(history, [(server.port, stage, "int", "before", None)] * 20, concurrency=4)
    assert len(served(history, stage, "int")) == 20
    table = {"v3": "uniquerand_v3_int", "v4": "uniquerand_v4_pool_int", "v5": "uniquerand_v5_counters"}[stage]
    snapshot = cluster.sql(f"SELECT * FROM {table} ORDER BY 1", dbname(database_url))

    cluster.sql("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
    cluster.sql("SELECT pg_reload_conf()")
    try:
        wait_for_setting(cluster, "synchronous_standby_names", "nobody")
        # /v5 serves from its lease: a batch beyond what a worker holds takes a new one.
        count = 60 if stage == "v5" else 3
        thread, result = in_thread(history.request, server.port, stage, "int", "lost commit", count, 60)
        query = "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event = 'SyncRep'"
        terminated = 0
        deadline = time.monotonic() + 30
        # Every COMMIT that waits is cut off (a background refill or lease may wait too) until the request answers.
        while thread.is_alive() and time.monotonic() < deadline:
            for (pid,) in cluster.sql(query, params=[dbname(database_url)]):
                terminated += cluster.sql("SELECT pg_terminate_backend(%s)", params=[pid])[0][0]
            time.sleep(0.02)
        thread.join(30)
    finally:
        cluster.sql("ALTER SYSTEM RESET synchronous_standby_names")
        cluster.sql("SELECT pg_reload_conf()")
    assert terminated, "no COMMIT ever waited for the standby"
    [op] = result
    assert_op_error(op, {"store_unavailable"})
    assert "lost its database connection" in op.body["error"]
    # The write did commit: the database changed.
    assert cluster.sql(f"SELECT * FROM {table} ORDER BY 1", dbname(database_url)) != snapshot

    # The space served to its end by every worker: nothing the lost commit recorded comes back.
    exhausted = drain(history, [server], stage, per_port=16)
    numbers = served(history, stage, "int")
    evidence = (
        f"{len(numbers)} served, outside the space {sorted(set(numbers) - set(range(1, 301)))}, recorded outside "
        f"the space {recorded_outside(cluster, database_url, stage, 'int', 300)}; answers {answers(history)}; workers "
        f"{server.worker_pids()}, of which answered space_exhausted: {exhausted_workers(server, stage)}; "
        f"open /v5 leases {open_leases(cluster, database_url)}"
    )
    assert exhausted, f"/{stage} never answered space_exhausted everywhere: {evidence}"
    history.check()
    assert set(numbers) <= set(range(1, 301)), evidence
    assert len(numbers) == len(set(numbers)) < 300, evidence
    # Retries are welcome here: what is checked is what the lost commit left behind.
    assert_answered(history, {stage: END_OF_SPACE[stage] | RETRYABLE - {"held_elsewhere"}})
    assert_no_unhandled_errors(server)


# 5. A database unreachable from the start, and a pool out of connections.


def test_an_unreachable_database_at_start_answers_503_and_the_rest_serves(servers, tmp_path):
    # Nothing listens on a free port of 127.0.0.1: every connection is refused.
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    server = start(servers, tmp_path / "instance", url, {**SMALL, "LOCK_TIMEOUT": 1})

    assert server.get("/healthz")[0] == 200
    for path in ("/v1/random", "/v2/random?type=float"):
        status, body, headers = server.get(path, CLIENT_TIMEOUT)
        assert status == 200 and headers["content-type"] == "application/json" and "number" in body
    # One at a time: each stage says that its database cannot be reached.
    for path in ("/v3/random", "/v4/random?type=float", "/v5/random?count=5"):
        status, body, headers = server.get(path, CLIENT_TIMEOUT)
        assert_json_error(status, body, headers, {"store_unavailable"})
        assert "cannot be reached" in body["error"], (path, body)
    # Many at once: still a 503 with Retry-After each, never a hang (a request queued behind another one's
    # connection attempt may be told that the store is busy).
    paths = [f"/{stage}/random{query}" for stage in STAGES for query in ("", "?type=float", "?count=5")]
    paths += [f"/{stage}/stats" for stage in STAGES]
    with ThreadPoolExecutor(8) as pool:
        for status, body, headers in pool.map(lambda path: get(server.port, path, CLIENT_TIMEOUT), paths):
            assert_json_error(status, body, headers, {"store_unavailable", "store_busy"})
    assert server.get("/v1/random")[0] == 200
    assert_no_unhandled_errors(server)


def test_a_pool_out_of_connections_answers_503_then_serves_after_release(servers, tmp_path, database_url, postgres):
    # One worker, two connections: a /v3 and a /v4 claim waiting for the test's lock hold both. A request waits
    # LOCK_TIMEOUT / 2 for a connection, and LOCK_TIMEOUT for a lock: the next ones find no connection first.
    settings = {**SMALL, "LOCK_TIMEOUT": 8, "DATABASE_POOL_SIZE": 2}
    server = start(servers, tmp_path / "instance", database_url, settings, workers=1)
    for path in ("/v3/random", "/v4/random", "/v5/random"):
        assert server.get(path)[0] == 200
    # The claims that will wait for the lock, and requests that each need a connection of their own: the
    # float pool's claim, the stats, a /v5 batch beyond the worker's lease.
    blocked, others = ["/v3/random", "/v4/random"], ["/v4/random?type=float", "/v3/stats", "/v5/random?count=50"]
    with locked(database_url, "uniquerand_v3_int", "uniquerand_v4_pool_int"):
        waiting = [in_thread(get, server.port, path, CLIENT_TIMEOUT) for path in blocked]
        wait_for_lock_waiters(postgres, database_url, 2)
        with ThreadPoolExecutor(3) as pool:
            refused = list(pool.map(lambda path: get(server.port, path, CLIENT_TIMEOUT), others))
        assert all(thread.is_alive() for thread, _ in waiting), "the claims must still wait for the lock"
    for status, body, headers in refused:
        assert_json_error(status, body, headers, {"store_unavailable"})
        assert "all its connections are in use" in body["error"]
    # Released: the waiting claims are served, and so is everything else.
    for thread, result in waiting:
        thread.join(CLIENT_TIMEOUT)
        assert result and result[0][0] == 200, result
    for path in blocked + others:
        status, body, _ = server.get(path, CLIENT_TIMEOUT)
        assert status == 200, (path, body)
    assert_no_unhandled_errors(server)


# 6. A query waiting for a lock under the gevent worker.


def test_a_query_waiting_for_a_lock_does_not_stop_the_gevent_worker(servers, tmp_path, database_url, postgres):
    settings = {**SMALL, "LOCK_TIMEOUT": 30, "WORKER_CLASS": "uniquerand.worker.FairGeventWorker"}
    server = start(servers, tmp_path / "instance", database_url, settings, workers=1)
    assert server.get("/v3/random")[0] == 200  # its tables exist before the test locks one
    with locked(database_url, "uniquerand_v3_int"):
        thread, result = in_thread(get, server.port, "/v3/random", 60)
        wait_for_lock_waiters(postgres, database_url, 1)
        # The only worker answers the others while that request waits in PostgreSQL.
        for path in ("/healthz", "/v1/random", "/v5/random", "/v4/random", "/v3/random?type=float&count=0"):
            status, body, headers = server.get(path, CLIENT_TIMEOUT)
            assert headers["content-type"] == "application/json", (path, body)
            if path.endswith("count=0"):  # refused before the store: a 422, not stuck behind the lock
                assert status == 422 and body["code"] == "invalid_parameter", body
            else:
                assert status == 200, (path, body)
        assert thread.is_alive(), "the /v3 request must still wait for the lock"
    thread.join(CLIENT_TIMEOUT)
    [(status, body, _)] = result
    assert status == 200 and 1 <= body["number"] <= 3000
    assert len(server.worker_pids()) == 1
    assert_no_unhandled_errors(server)
