"""The project's gunicorn worker class: gthread, accepting a new connection only while a thread is free.

gunicorn's gthread worker accepts every connection it can poll, and a keep-alive connection stays with the
worker that accepted it for its whole life. Clients that connect together (a pool of keep-alive
clients, a load balancer's connections) are accepted by whichever worker the scheduler runs first: 24 of
32 connections landed on one of four workers here. A request that waits on a store (an fsync of /v3 or
/v4) holds its thread, so that worker queues requests behind its 4 threads while the others sit idle.
"""

from __future__ import annotations

from gunicorn.workers.gthread import ThreadWorker


class BalancedThreadWorker(ThreadWorker):
    """Accepts only while fewer connections are in its threads than it has threads, so a new connection waits
    in the listen queue for a worker with a free thread. A connection is in a thread while its request is
    served, and, when new, while gunicorn waits (up to 5 s) for its first request. A kept-alive HTTP/1.1
    connection holds no thread between its requests, so none is starved; when every thread of every worker
    is busy, new connections wait in the kernel's queue, as they do for gunicorn's sync workers."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.in_threads = 0  # connections submitted to the thread pool and not finished; main thread only

    def enqueue_req(self, conn) -> None:
        super().enqueue_req(conn)  # raises if the pool is shut down: then nothing was counted
        self.in_threads += 1
        if self.in_threads >= self.cfg.threads:
            super().set_accept_enabled(False)

    def accept(self, listener) -> None:
        # select() returned the listener's event with others; one of those may have taken the last thread.
        if self._accepting:
            super().accept(listener)

    def finish_request(self, conn, fs) -> None:
        # Runs on the main thread; the main loop then re-enables accepting through set_accept_enabled.
        self.in_threads -= 1
        super().finish_request(conn, fs)

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled and self.in_threads < self.cfg.threads)
