"""uniquerand.storage.runtime: blocking calls on real OS threads under gevent, in place elsewhere; background
work; per-process state that no forked child inherits.

The gevent cases run in a child process: monkey-patching this one would change every other test."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from tests.support import REPO
from uniquerand.storage import runtime

UNDER_GEVENT = """
from gevent import monkey
monkey.patch_all()
import json, threading
import gevent
from uniquerand.storage import runtime

def where():
    return threading.get_native_id()

def fail():
    raise ValueError("from the pool")

loop_thread = threading.get_native_id()
result = {"patched": runtime.gevent_patched(), "ran_on": runtime.run_blocking(where), "loop": loop_thread}
try:
    runtime.run_blocking(fail)
except ValueError as err:
    result["raised"] = str(err)
# While a call blocks its OS thread for 0.3 s, a greenlet on the loop keeps running.
ticks = []
ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(10)])
runtime.run_blocking(monkey.get_original("time", "sleep"), 0.3)  # blocks its OS thread, as a flock wait does
result["ticks_meanwhile"] = len(ticks)
ticker.join()
local = runtime.os_thread_local()
local.value = 1
result["local_shared_by_greenlets"] = gevent.spawn(lambda: getattr(local, "value", None)).get()
print(json.dumps(result))
"""


def test_without_gevent_run_is_the_plain_call():
    assert not runtime.gevent_patched()
    assert runtime.run_blocking(threading.get_native_id) == threading.get_native_id()
    with pytest.raises(ZeroDivisionError):
        runtime.run_blocking(lambda: 1 / 0)


def test_under_gevent_run_uses_an_os_thread_the_loop_serves_on_and_errors_come_back_silently():
    child = subprocess.run(
        [sys.executable, "-c", UNDER_GEVENT], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    assert result["patched"]
    assert result["ran_on"] != result["loop"]
    assert result["raised"] == "from the pool"
    assert result["ticks_meanwhile"] >= 5  # the loop was not blocked by the call
    assert result["local_shared_by_greenlets"] == 1
    assert "Traceback" not in child.stderr  # gevent prints an exception raised in its pool; none may be


UNDER_GEVENT_STATE = """
from gevent import monkey
monkey.patch_all()
import json, threading, time
import gevent
from uniquerand.storage import runtime

# Built at first use, after the patching: a lock of gevent's, which a waiting greenlet yields on.
state = runtime.PerProcess(lambda: {"lock": threading.Lock()})
lock = state.get()["lock"]
order = []

def holder():
    with lock:
        order.append("held")
        gevent.sleep(0.05)
        order.append("released")

def waiter():
    with lock:
        order.append("waited")

background = runtime.start_background("test", lambda: (time.sleep(0.05), "done")[1])
gevent.joinall([gevent.spawn(holder), gevent.spawn(waiter)], timeout=5)
print(json.dumps({"order": order, "background": background.result(timeout=5)}))
"""


def test_under_gevent_per_process_state_is_built_cooperative_and_background_work_runs():
    child = subprocess.run(
        [sys.executable, "-c", UNDER_GEVENT_STATE], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    # A real OS lock would block the loop's thread in the waiter while the holder sleeps: a deadlock.
    assert result == {"order": ["held", "released", "waited"], "background": "done"}


def _build_in_child(state, queue) -> None:
    queue.put(state.get())


def test_per_process_state_is_built_anew_in_a_forked_child():
    import multiprocessing
    import os

    state = runtime.PerProcess(os.getpid)
    assert state.get() == os.getpid()
    assert state.built() == os.getpid()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_build_in_child, args=(state, queue))
    child.start()
    built_by_child = queue.get(timeout=30)
    child.join(30)
    assert child.exitcode == 0
    assert built_by_child == child.pid != os.getpid()
    assert state.get() == os.getpid()  # the parent keeps its own


def test_racing_threads_build_per_process_state_once():
    import time
    from concurrent.futures import ThreadPoolExecutor

    builds = []

    def build():
        builds.append(1)
        time.sleep(0.05)
        return object()

    state = runtime.PerProcess(build)
    with ThreadPoolExecutor(8) as pool:
        values = list(pool.map(lambda _: state.get(), range(8)))
    assert len(builds) == 1
    assert all(value is values[0] for value in values)


def test_background_work_hands_back_its_result_or_error():
    assert runtime.start_background("test", lambda x: x * 2, 21).result(timeout=5) == 42
    with pytest.raises(ZeroDivisionError):
        runtime.start_background("test", lambda: 1 / 0).result(timeout=5)
