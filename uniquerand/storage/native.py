"""Blocking system calls off gevent's event loop.

Under gunicorn's gevent worker, gevent has patched `threading`: a "thread" is a greenlet of one OS thread,
and a call that blocks in the kernel or in C (a `flock` wait, an fsync, SQLite's busy handler) stops every
request of the worker until it returns. `run` and `executor` put such calls on real OS threads from gevent's
own pool, which release the GIL while they block; the calling greenlet waits cooperatively. In any other
process (the thread worker, the CLI, the tests) they are the plain call and the standard thread pool.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def gevent_patched() -> bool:
    """True in a process whose `threading` gevent has monkey-patched."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


def run(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)`, on a real OS thread when gevent has patched this process, else in place."""
    if gevent_patched():
        from gevent import get_hub

        return get_hub().threadpool.apply(function, args)
    return function(*args)


def executor(max_workers: int, thread_name_prefix: str) -> Executor:
    """A pool of real OS threads whose futures the caller may wait on (cooperatively under gevent)."""
    if gevent_patched():
        from gevent.threadpool import ThreadPoolExecutor as NativeThreadPoolExecutor

        return NativeThreadPoolExecutor(max_workers)
    return ThreadPoolExecutor(max_workers, thread_name_prefix=thread_name_prefix)
