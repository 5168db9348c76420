"""uniquerand.storage.native: blocking calls on real OS threads under gevent, in place elsewhere.

The gevent case runs in a child process: monkey-patching this one would change every other test."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from tests.support import REPO
from uniquerand.storage import native

UNDER_GEVENT = """
from gevent import monkey
monkey.patch_all()
import json, threading
import gevent
from uniquerand.storage import native

def where():
    return threading.get_native_id()

def fail():
    raise ValueError("from the pool")

loop_thread = threading.get_native_id()
result = {"patched": native.gevent_patched(), "ran_on": native.run(where), "loop": loop_thread}
try:
    native.run(fail)
except ValueError as err:
    result["raised"] = str(err)
# While a call blocks its OS thread for 0.3 s, a greenlet on the loop keeps running.
ticks = []
ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(10)])
native.run(monkey.get_original("time", "sleep"), 0.3)  # blocks its OS thread, as a flock wait does
result["ticks_meanwhile"] = len(ticks)
ticker.join()
local = native.thread_local()
local.value = 1
result["local_shared_by_greenlets"] = gevent.spawn(lambda: getattr(local, "value", None)).get()
print(json.dumps(result))
"""


def test_without_gevent_run_is_the_plain_call():
    assert not native.gevent_patched()
    assert native.run(threading.get_native_id) == threading.get_native_id()
    with pytest.raises(ZeroDivisionError):
        native.run(lambda: 1 / 0)


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
