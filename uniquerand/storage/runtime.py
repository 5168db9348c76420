"""The only module that knows how this process runs: gevent or plain threads, OS threads, and fork.

Under gunicorn's gevent worker (the default), gevent has patched `threading`: a "thread" is a greenlet of one
OS thread, and a call that blocks in the kernel or in C (a `flock` wait, an fsync, SQLite's busy handler)
stops every request of the worker until it returns. Elsewhere (the thread worker, the `flask` commands, the
stores in-process in tests) threads are OS threads. The stores never ask which; they use:

- `run_blocking(f, *args)`: such a call, on a real OS thread under gevent (which releases the GIL while it
  blocks, while the calling greenlet waits cooperatively); in place elsewhere.
- `start_background(name, f, *args)`: work that nobody waits for at once (a refill, a lease taken ahead),
  on a greenlet under gevent and an OS thread elsewhere; a `Future` of its result.
- `os_thread_local()`: data per OS thread. gevent's patched `threading.local` is per greenlet, that is per
  request: a connection kept there would be opened again by every request.
- `PerProcess(build)`: state that must never cross a fork (locks, connections, threads, leases), built on
  first use in the process that uses it. gunicorn forks its workers from a master that built the app, and
  gevent patches a worker only after the fork: a lock built at the fork would be a real OS lock in a gevent
  worker, whose `acquire` stops the whole worker while another greenlet holds it. Built at first use, every
  lock, queue and thread is of the kind the process runs with.
- `TimedLock(timeout, busy)`: a lock whose `with` gives up after `timeout` seconds with the error `busy` makes.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

T = TypeVar("T")
# OS threads per process for `run_blocking`: a writer waiting for a lock another process holds keeps one that
# long (a /v4 worker has six writers), so gevent's default of 10 could leave /v5's leases queued behind them.
POOL_SIZE = 32


def gevent_patched() -> bool:
    """True in a process whose `threading` gevent has monkey-patched."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


class PerProcess(Generic[T]):
    """A value built once per process, on first use, thread-safely: two threads racing at a worker's first
    requests still build it once, and a forked child builds its own instead of using its parent's."""

    __slots__ = ("_build", "_lock", "_pid", "_value")

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._pid = 0
        self._value: T | None = None
        self._lock: Any = None

    def get(self) -> T:
        if self._pid != os.getpid():
            self._build_here()
        return self._value

    def _build_here(self) -> None:
        pid = os.getpid()
        with _guard:  # held for a few statements, never across a wait
            if self._lock is None or self._lock.pid != pid:
                # Made here, in this process and as it runs (patched or not).
                self._lock = _ProcessLock(pid)
            lock = self._lock
        with lock.lock:
            if self._pid != pid:
                self._value = self._build()
                self._pid = pid

    def built(self) -> T | None:
        """The value if this process has built it, else None (never builds)."""
        return self._value if self._pid == os.getpid() else None


def _new_guard() -> None:
    global _guard
    _guard = threading.Lock()


_guard = threading.Lock()
# A child forked while another thread of its parent held the guard would inherit it held.
os.register_at_fork(after_in_child=_new_guard)


class _ProcessLock:
    __slots__ = ("lock", "pid")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.lock = threading.Lock()


def run_blocking(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)`, on a real OS thread when gevent has patched this process, else in place."""
    if not gevent_patched():
        return function(*args)
    raised, outcome = _os_threads.get().apply(_outcome, (function, args))
    if raised:
        raise outcome
    return outcome


def start_background(name: str, function: Callable[..., T], *args: Any) -> Future:
    """Runs `function(*args)` apart from the caller: a greenlet under gevent, a daemon OS thread elsewhere.
    The future holds its result or exception; a blocking call inside it still goes through `run_blocking`."""
    future: Future = Future()
    future.set_running_or_notify_cancel()

    def work() -> None:
        try:
            future.set_result(function(*args))
        except BaseException as err:
            future.set_exception(err)

    # Under gevent, `threading.Thread` is a greenlet: no OS thread, and its waits are cooperative.
    threading.Thread(target=work, name=name, daemon=True).start()
    return future


def os_thread_local() -> threading.local:
    """Data per OS thread, even where gevent has made `threading.local` per greenlet."""
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


def _new_os_threads() -> Any:
    from gevent.threadpool import ThreadPool

    return ThreadPool(POOL_SIZE)


_os_threads: PerProcess[Any] = PerProcess(_new_os_threads)


class TimedLock:
    """A thread lock whose `with` gives up after `timeout` seconds with the error `busy` makes. One object per
    lock, made with it: /v5's typical request takes the lock, and building a wrapper for every `with` cost
    about a tenth of that request's path in the store."""

    __slots__ = ("_lock", "busy", "timeout")

    def __init__(self, timeout: float, busy: Callable[[], BaseException]) -> None:
        self._lock = threading.Lock()
        self.timeout, self.busy = timeout, busy

    def __enter__(self) -> None:
        if not self._lock.acquire(timeout=self.timeout):
            raise self.busy()

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()
