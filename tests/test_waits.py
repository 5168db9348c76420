"""A request that waits for a store never stops its worker.

gunicorn's gevent worker (the project's default) serves every request of a worker on one OS thread: a wait
that blocks in the kernel there (a flock, SQLite's busy handler) would stop every other request of the
worker until it ended. The stores run those waits on real threads (uniquerand/storage/runtime.py). Here
another process holds the lock a stage's writer takes, on a server of one worker: the stage answers 503
`store_busy` after LOCK_TIMEOUT, and meanwhile the same worker answers /healthz and the other stages at once.
The /v3, /v4 and /v5 cases fail with those waits on the event loop's thread (checked). /v1 runs on the
event loop: its case passes because filelock polls with `time.sleep`, which gevent makes cooperative.
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import filelock
import pytest

from tests.support import get

LOCK_TIMEOUT = 2


@contextlib.contextmanager
def flocked(paths: list[Path]) -> Iterator[None]:
    """Exclusive flocks on `paths`, as a writer of another process holds them."""
    descriptors = []
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+b")  # noqa: SIM115 - closed below, after the unlock
            descriptors.append(handle)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        for handle in descriptors:
            handle.close()  # drops its flock


@contextlib.contextmanager
def json_lock_held(instance: Path) -> Iterator[None]:
    lock = filelock.FileLock(str(instance / "v1" / "used_numbers.json.lock"), thread_local=False)
    lock.acquire(timeout=5)
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def sqlite_write_lock_held(path: Path) -> Iterator[None]:
    """SQLite's write lock on `path`, held by an open `BEGIN IMMEDIATE` transaction of this process."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        yield
    finally:
        connection.close()  # rolls back


HOLDERS = {
    "v1": json_lock_held,
    "v3": lambda instance: flocked([instance / "v3" / "numbers.db.lock"]),
    "v4": lambda instance: flocked([instance / "v4" / f"int_shard_{index}.db.claim.lock" for index in (0, 1)]),
    # /v5 waits only for a lease: the worker has none yet, so its first number needs one.
    "v5": lambda instance: sqlite_write_lock_held(instance / "v5" / "counters.db"),
}


def _waiting_beside(server, holder, request, paths: tuple[str, ...]) -> tuple[tuple, dict[str, int], float]:
    """`request()` on a thread while `holder` (a context manager) holds its lock, and meanwhile one GET of
    /healthz and of each of `paths` on the same server: the request's answer, their statuses, and the seconds
    from taking the lock to the request's end."""
    answers: list = []
    with holder:
        started = time.monotonic()
        waiting = threading.Thread(target=lambda: answers.append(request()))
        waiting.start()
        time.sleep(0.5)  # the request is waiting for the lock by now
        others = {path: server.get(path, timeout=1.0)[0] for path in ("/healthz", *paths)}
        waiting.join(30)
    return answers[0], others, time.monotonic() - started


@pytest.mark.parametrize("stage", sorted(HOLDERS))
def test_a_request_waiting_for_a_lock_leaves_its_worker_serving(make_server, filled_shards, instance_path, stage):
    filled_shards(100)
    server = make_server(workers=1, env={"UNIQUERAND_LOCK_TIMEOUT": str(LOCK_TIMEOUT)})
    assert server.get("/v3/random")[0] == 200  # /v3's database exists, and the worker serves
    answer, others, took = _waiting_beside(
        server, HOLDERS[stage](instance_path), lambda: server.get(f"/{stage}/random", timeout=30), ("/v2/random",)
    )
    assert others == {"/healthz": 200, "/v2/random": 200}, "the worker stopped while a request waited for a lock"
    status, body, _ = answer
    assert (status, body["code"]) == (503, "store_busy")
    assert LOCK_TIMEOUT - 0.5 <= took <= LOCK_TIMEOUT + 5
    # Once the lock is free the stage serves again.
    assert server.get(f"/{stage}/random")[0] == 200


# A keyed /v5 draw records its answer in replies.db: the writer begins on the worker's loop only when the lock
# is free at once, and waits for another writer (of the lock file, or of SQLite's lock alone) on a thread.
KEYED_HOLDERS = {
    "lock file": lambda instance: flocked([instance / "v5" / "replies.db.lock"]),
    "sqlite lock": lambda instance: sqlite_write_lock_held(instance / "v5" / "replies.db"),
}


@pytest.mark.parametrize("holder", sorted(KEYED_HOLDERS))
def test_a_keyed_draw_waiting_for_the_replies_lock_leaves_its_worker_serving(make_server, instance_path, holder):
    server = make_server(workers=1, env={"UNIQUERAND_LOCK_TIMEOUT": str(LOCK_TIMEOUT)})
    keyed = lambda key: get(server.port, "/v5/random", timeout=30, headers={"Idempotency-Key": key})  # noqa: E731
    assert keyed("first")[0] == 200  # replies.db exists, and the worker's writer has its connection
    answer, others, took = _waiting_beside(
        server, KEYED_HOLDERS[holder](instance_path), lambda: keyed("second"), ("/v5/random",)
    )
    assert others == {"/healthz": 200, "/v5/random": 200}, "the worker stopped while a keyed draw waited"
    status, body, _ = answer
    assert (status, body["code"]) == (503, "store_busy")
    assert LOCK_TIMEOUT - 0.5 <= took <= LOCK_TIMEOUT + 5
    assert keyed("third")[0] == 200
