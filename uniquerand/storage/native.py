"""Blocking system calls off gevent's event loop.

Under gunicorn's gevent worker (the project's default), gevent has patched `threading`: a "thread" is a
greenlet of one OS thread, and a call that blocks in the kernel or in C (a `flock` wait, an fsync, SQLite's
busy handler) stops every request of the worker until it returns. `run` puts such a call on a real OS
thread, which releases the GIL while it blocks; the calling greenlet waits cooperatively. In any other
process (the thread worker, the CLI, the stores in-process in tests) it is the plain call.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
# OS threads per process: a writer waiting for a lock another process holds keeps one for that long (a /v4
# worker has six writers), so gevent's default of 10 could leave /v5's leases queued behind them.
POOL_SIZE = 32

_pool: Any = None
_pool_pid = 0


def gevent_patched() -> bool:
    """True in a process whose `threading` gevent has monkey-patched."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


def run(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)`, on a real OS thread when gevent has patched this process, else in place."""
    if not gevent_patched():
        return function(*args)
    raised, outcome = _threads().apply(_outcome, (function, args))
    if raised:
        raise outcome
    return outcome


def thread_local() -> threading.local:
    """Data per OS thread (connections kept per thread). Under gevent the patched `threading.local` is per
    greenlet, that is per request: a connection kept there would be opened again by every request."""
    if gevent_patched():
        from gevent.monkey import get_original

        return get_original("threading", "local")()
    return threading.local()


def _outcome(function: Callable[..., Any], args: tuple) -> tuple[bool, Any]:
    # On the pool's thread. An exception is handed back, not raised: gevent prints the traceback of one
    # raised there, and the caller's handling (a 503, a structured log event) is the one that counts.
    try:
        return False, function(*args)
    except BaseException as err:
        return True, err


def _threads() -> Any:
    """This process's pool of OS threads, made after any fork."""
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():
        from gevent.threadpool import ThreadPool

        _pool, _pool_pid = ThreadPool(POOL_SIZE), os.getpid()
    return _pool
