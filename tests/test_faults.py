"""The fault suite: every stage of a real gunicorn (several workers and threads) under concurrent load while
faults are injected; every request is recorded and the history checked (tests/history.py): no number twice
per stage and type, no burned number back, availability per phase (100% without a fault)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.fault_support import (
    SETTINGS,
    code_of,
    env_of,
    fill_up,
    hold_lock,
    recorded_codes,
    remount,
    tmpfs,
)
from tests.history import KINDS, STAGES, History, HistoryError, Operation
from tests.support import REPO, GunicornServer, finish_process
from tests.v4_support import assert_files_consistent, ledger_codes

SPAWN = multiprocessing.get_context("spawn")
PHASE_REQUESTS = 250


@pytest.fixture
def history(request, capsys):
    """The test's history; its availability table is printed in the test output, and checked at the end."""
    recorded = History()
    yield recorded
    summary = recorded.summary()
    request.node.user_properties.append(("availability", summary))
    with capsys.disabled():
        print(f"\n{request.node.name}\n{summary}")


@pytest.fixture
def servers():
    """Every gunicorn started by a test, resumed (SIGCONT) and stopped by PID afterwards, whatever happened."""
    started: list[GunicornServer] = []
    yield started
    for server in started:
        if server.process is not None:
            for pid in [server.process.pid, *server.worker_pids()]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        server.stop(graceful=False)  # the test is over: nothing to wait for


def start(servers: list, instance: Path, settings: dict = SETTINGS, **options) -> GunicornServer:
    server = GunicornServer(instance, env=env_of(settings), **{"workers": 3, "threads": 4, **options})
    servers.append(server)
    server.start()
    return server


def background_load(history: History, server: GunicornServer, phase: str, requests: int, **options):
    """Starts a load on its own thread; returns (thread, stop event). Join with a bound."""
    stop = threading.Event()
    thread = threading.Thread(
        target=history.load, args=(server.port, phase, requests), kwargs={"stop": stop, **options}
    )
    thread.start()
    return thread, stop


def finish(thread: threading.Thread, stop: threading.Event, timeout: float = 60.0) -> None:
    thread.join(timeout)
    stop.set()
    thread.join(30)
    assert not thread.is_alive(), "the load did not finish"


def assert_fully_available(history: History, phase: str, stages=STAGES) -> None:
    operations = [op for op in history.of(phase) if op.stage in stages]
    assert operations, f"phase {phase} made no request"
    failed = [(op.stage, op.kind, op.status, op.body, op.detail) for op in operations if op.outcome != "ok"]
    assert not failed, f"phase {phase}: {len(failed)} of {len(operations)} requests not answered 200: {failed[:5]}"


def assert_errors_are_json(history: History, phase: str) -> None:
    for op in history.of(phase):
        if op.outcome == "error":
            assert op.status >= 500 and isinstance(op.body.get("error"), str), op
            assert op.headers.get("content-type") == "application/json", op


def assert_served_is_recorded(history: History, instance: Path, phases=None) -> None:
    """Every number answered 200 is in its stage's files: it was durable before the response."""
    for stage in STAGES:
        for kind in KINDS:
            served = {
                code_of(number, kind, SETTINGS["FLOAT_DECIMALS"])
                for op in history.of(stage=stage)
                if op.kind == kind and op.outcome == "ok" and (phases is None or op.phase in phases)
                for number in op.numbers
            }
            missing = served - recorded_codes(instance, stage, kind)
            assert not missing, f"/{stage} {kind}: served but not recorded: {sorted(missing)[:5]}"


def recover(history: History, server: GunicornServer, phase: str, deadline: float = 30.0) -> None:
    """After a fault is gone: probes every stage and type (recorded, so the probes are checked too) until
    each answers 200 once, without restarting anything."""
    end = time.monotonic() + deadline
    pending = {(stage, kind) for stage in STAGES for kind in KINDS}
    while pending and time.monotonic() < end:
        for stage, kind in sorted(pending):
            if history.request(server.port, stage, kind, phase, timeout=10).outcome == "ok":
                pending.discard((stage, kind))
        time.sleep(0.05)
    assert not pending, f"no recovery within {deadline}s: {sorted(pending)}"


# The checker itself.


def op(stage: str, kind: str, outcome: str, numbers: tuple, sent: float) -> Operation:
    status = {"ok": 200, "error": 503, "lost": None}[outcome]
    return Operation(stage, kind, "synthetic", sent, sent, outcome, numbers, status, {})


def test_checker_reports_a_number_served_twice_and_a_burned_number_coming_back():
    clean = History()
    for operation in [
        op("v3", "int", "ok", (1, 2), 0),
        op("v3", "float", "ok", (1.0,), 1),
        op("v4", "int", "ok", (1,), 2),
    ]:
        clean.record(operation)
    clean.record(op("v3", "int", "lost", (), 3))
    clean.check()
    assert clean.availability() == {("synthetic", "v3"): (2, 3), ("synthetic", "v4"): (1, 1)}

    duplicated = History()
    duplicated.record(op("v3", "int", "ok", (1, 2), 0))
    duplicated.record(op("v3", "int", "ok", (2,), 1))
    with pytest.raises(HistoryError, match=r"/v3 int: 1 numbers served twice, e\.g\. \[2\]"):
        duplicated.check()

    burned = History()
    burned.record(op("v2", "float", "error", (0.5,), 0))
    burned.record(op("v2", "float", "ok", (0.5,), 1))
    with pytest.raises(HistoryError, match=r"/v2 float: 1 burned numbers served with a 200, e\.g\. \[0\.5\]"):
        burned.check()


# Faults.


def test_without_faults_every_request_is_answered(servers, history, instance_path, filled_shards):
    filled_shards(**SETTINGS)
    server = start(servers, instance_path)
    history.load(server.port, "steady", 2 * PHASE_REQUESTS)
    history.check()
    assert_fully_available(history, "steady")
    assert_served_is_recorded(history, instance_path)


def test_kill_9_of_single_workers_repeatedly(servers, history, instance_path, filled_shards):
    filled_shards(**SETTINGS)
    server = start(servers, instance_path)
    history.load(server.port, "before", PHASE_REQUESTS)
    thread, stop = background_load(history, server, "killing workers", 4 * PHASE_REQUESTS)
    killed = []
    try:
        for _ in range(4):
            time.sleep(0.4)
            victim = server.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
    finally:
        finish(thread, stop)
    # gunicorn replaces every killed worker (booting one takes a while on a loaded machine).
    # One snapshot per check: a killed worker can turn zombie between two reads of /proc.
    deadline = time.monotonic() + 60
    workers = server.worker_pids()
    while time.monotonic() < deadline and (len(workers) != 3 or set(killed) & set(workers)):
        time.sleep(0.1)
        workers = server.worker_pids()
    assert len(workers) == 3 and not set(killed) & set(workers), (workers, killed)
    history.load(server.port, "after", PHASE_REQUESTS)

    history.check()
    assert_fully_available(history, "before")
    assert_fully_available(history, "after")
    assert_errors_are_json(history, "killing workers")
    assert_served_is_recorded(history, instance_path)


def test_kill_9_of_the_whole_server_then_restart(servers, history, instance_path, filled_shards):
    filled_shards(**SETTINGS)
    server = start(servers, instance_path)
    history.load(server.port, "before", PHASE_REQUESTS)
    thread, stop = background_load(history, server, "crash", 4 * PHASE_REQUESTS)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(history.of("crash")) < PHASE_REQUESTS // 2:
            time.sleep(0.01)
        server.kill9()
    finally:
        finish(thread, stop)
    crashed = history.of("crash")
    assert any(op.outcome == "ok" for op in crashed) and any(op.outcome == "lost" for op in crashed), (
        "the kill must land mid-load"
    )
    assert_served_is_recorded(history, instance_path)

    restarted = start(servers, instance_path)
    recover(history, restarted, "restart")
    history.load(restarted.port, "after restart", PHASE_REQUESTS)

    history.check()
    assert_fully_available(history, "before")
    assert_fully_available(history, "after restart")
    assert_served_is_recorded(history, instance_path)


def test_sigstop_of_one_worker_others_keep_serving_and_it_recovers(servers, history, instance_path, filled_shards):
    filled_shards(**SETTINGS)
    server = start(servers, instance_path, settings={**SETTINGS, "LOCK_TIMEOUT": 2})
    history.load(server.port, "before", PHASE_REQUESTS)
    victim = server.worker_pids()[0]
    thread, stop = background_load(history, server, "one worker paused", 3 * PHASE_REQUESTS, timeout=30)
    try:
        time.sleep(0.3)
        os.kill(victim, signal.SIGSTOP)
        paused_at = time.monotonic()
        time.sleep(3)
        resumed_at = time.monotonic()
    finally:
        os.kill(victim, signal.SIGCONT)
        finish(thread, stop)
    answered_while_paused = [op for op in history.of("one worker paused") if paused_at < op.answered < resumed_at]
    assert any(op.outcome == "ok" for op in answered_while_paused), "the other workers must keep serving"
    # The paused worker was not replaced and serves again: requests it had accepted are answered, none lost.
    assert victim in server.worker_pids()
    assert not [op for op in history.of("one worker paused") if op.outcome == "lost"]
    history.load(server.port, "after", PHASE_REQUESTS)

    history.check()
    assert_fully_available(history, "before")
    assert_fully_available(history, "after")
    assert_errors_are_json(history, "one worker paused")
    assert_served_is_recorded(history, instance_path)


def test_v4_refill_killed_half_way_then_the_stage_serves_without_duplicates(servers, history, instance_path):
    # A larger int space, so that a refill of 200000 numbers takes long enough to be killed half-way.
    settings = {**SETTINGS, "INT_MAX": 400_000}
    server = start(servers, instance_path, settings=settings)
    recover(history, server, "first refill")
    history.load(server.port, "before", PHASE_REQUESTS, stages=["v4"])
    env = {**os.environ, **env_of(settings), "UNIQUERAND_INSTANCE_PATH": str(instance_path)}
    command = [sys.executable, "-m", "flask", "init-shards", "--size", "200000"]
    thread, stop = background_load(history, server, "refill killed", 2 * PHASE_REQUESTS, stages=["v4"])
    refill = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        folder = instance_path / "v4"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and refill.poll() is None and len(ledger_codes(folder, "int")) < 60_000:
            time.sleep(0.005)
        refill.kill()
        assert refill.wait(10) == -signal.SIGKILL, "the refill must be killed half-way, not finish"
    finally:
        if refill.poll() is None:
            refill.kill()
            refill.wait(10)
        finish(thread, stop)
    assert_files_consistent(folder, "int")
    recover(history, server, "recovering")
    history.load(server.port, "after", PHASE_REQUESTS, stages=["v4"])

    history.check()
    assert_fully_available(history, "before")
    assert_fully_available(history, "after")
    assert_files_consistent(folder, "int")
    assert_files_consistent(folder, "float")


def test_full_disk_answers_503_and_service_resumes_once_space_is_freed(servers, history, instance_path, filled_shards):
    try:
        mounted = tmpfs(instance_path, "48m")
        mounted.__enter__()
    except OSError as err:
        pytest.skip(f"mounting a tmpfs is not permitted here ({err}); a full disk cannot be simulated")
    try:
        filled_shards(**SETTINGS)
        server = start(servers, instance_path)
        history.load(server.port, "before", PHASE_REQUESTS)
        ballast = fill_up(instance_path)
        history.load(server.port, "disk full", 2 * PHASE_REQUESTS)
        faulted = history.of("disk full")
        assert any(op.outcome == "error" for op in faulted), "a full disk must refuse some writes"
        assert_errors_are_json(history, "disk full")
        assert all(op.outcome != "lost" for op in faulted)
        assert_served_is_recorded(history, instance_path)
        ballast.unlink()
        recover(history, server, "recovering")
        history.load(server.port, "after", PHASE_REQUESTS)

        history.check()
        assert_fully_available(history, "before")
        assert_fully_available(history, "after")
        assert_served_is_recorded(history, instance_path)
    finally:
        for server in servers:
            server.stop()
        mounted.__exit__(None, None, None)


def test_read_only_folder_answers_503_and_service_resumes_once_writable(servers, history, instance_path, filled_shards):
    # Only the JSON stages' folders: Linux refuses to remount a filesystem read-only while a file on it is
    # open for writing, and the SQLite stages keep their databases open (a read-only remount of a live
    # SQLite store only comes from the kernel after an I/O error). Their write faults are the full disk's.
    json_stages = ["v1", "v2"]
    mounts = []
    try:
        for stage in json_stages:
            mount = tmpfs(instance_path / stage, "8m")
            mount.__enter__()
            mounts.append(mount)
    except OSError as err:
        pytest.skip(f"mounting a tmpfs is not permitted here ({err}); a read-only folder cannot be simulated")
    try:
        filled_shards(**SETTINGS)
        server = start(servers, instance_path)
        history.load(server.port, "before", PHASE_REQUESTS)
        # The remount lands while the load runs; then a whole phase runs on the read-only folders.
        thread, stop = background_load(history, server, "going read-only", 3 * PHASE_REQUESTS)
        try:
            time.sleep(0.2)
            for stage in json_stages:
                remount(instance_path / stage, "ro")
        finally:
            stop.set()
            finish(thread, stop)
        history.load(server.port, "read-only", PHASE_REQUESTS)
        faulted = history.of("read-only")
        refused = [op for op in faulted if op.stage in json_stages]
        assert refused and all(op.status == 503 and op.body["code"] == "store_unavailable" for op in refused), [
            (op.status, op.body) for op in refused[:5]
        ]
        assert all("retry-after" in op.headers for op in refused)
        assert all(op.outcome == "ok" for op in faulted if op.stage not in json_stages), "other stages keep serving"
        for stage in json_stages:
            remount(instance_path / stage, "rw")
        recover(history, server, "recovering")
        history.load(server.port, "after", PHASE_REQUESTS)

        history.check()
        assert_fully_available(history, "before")
        assert_fully_available(history, "after")
        assert_errors_are_json(history, "going read-only")
        assert_errors_are_json(history, "read-only")
        assert_served_is_recorded(history, instance_path)
    finally:
        for server in servers:
            server.stop()
        for mount in reversed(mounts):
            mount.__exit__(None, None, None)


def test_stuck_lock_holder_gets_503_with_retry_after_never_a_hang(servers, history, instance_path, filled_shards):
    filled_shards(**SETTINGS)
    server = start(servers, instance_path, settings={**SETTINGS, "LOCK_TIMEOUT": 1})
    history.load(server.port, "before", PHASE_REQUESTS)
    ready, release = SPAWN.Event(), SPAWN.Event()
    locks = [str(instance_path / stage / "used_numbers.json.lock") for stage in ("v1", "v2")]
    holder = SPAWN.Process(target=hold_lock, args=(locks, ready, release, 60))
    holder.start()
    try:
        assert ready.wait(30), "the lock holder did not take the locks"
        # A client timeout well above the lock timeout: a request still waiting by then is a hang.
        history.load(server.port, "lock held", 100, timeout=10)
    finally:
        release.set()
        finish_process(holder)
    assert holder.exitcode == 0
    held = history.of("lock held")
    for stage in ("v1", "v2"):
        stuck = [op for op in held if op.stage == stage]
        assert stuck and all(op.status == 503 and op.body["code"] == "store_busy" for op in stuck), stuck[:3]
        assert all(op.headers.get("retry-after") == "1" for op in stuck)
    assert_fully_available(history, "lock held", stages=["v3", "v4", "v5"])
    history.load(server.port, "after", PHASE_REQUESTS)

    history.check()
    assert_fully_available(history, "before")
    assert_fully_available(history, "after")
    assert_served_is_recorded(history, instance_path)


def test_two_servers_on_one_instance_folder_never_share_a_number(servers, history, instance_path, filled_shards):
    filled_shards(**SETTINGS)
    first = start(servers, instance_path)
    second = GunicornServer(instance_path, env=env_of(SETTINGS), workers=3, threads=4)
    second.log_path = instance_path.parent / "gunicorn-second.log"
    servers.append(second)
    second.start()
    loads = [
        threading.Thread(target=history.load, args=(server.port, "two servers", 2 * PHASE_REQUESTS))
        for server in (first, second)
    ]
    for load in loads:
        load.start()
    for load in loads:
        load.join(90)
    assert not any(load.is_alive() for load in loads)

    history.check()
    assert_fully_available(history, "two servers")
    assert_served_is_recorded(history, instance_path)
