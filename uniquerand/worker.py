"""The project's gunicorn worker classes: `FairGeventWorker`, the default (see gunicorn.conf.py), and
`BalancedThreadWorker` (`-k uniquerand.worker.BalancedThreadWorker`).

BalancedThreadWorker is gthread, accepting new connections only while it serves fewer new
connections than it has threads.

gunicorn's gthread worker accepts every connection it can poll, and a keep-alive connection stays with the
worker that accepted it for its whole life. Clients that connect together (a pool of keep-alive
clients, a load balancer's connections) are accepted by whichever worker the scheduler runs first, often
most of them by one worker. A request that waits on a store (an fsync of /v3 or /v4) holds its thread, so
that worker queues requests behind its threads while the others sit idle.
"""

from __future__ import annotations

import gevent
from gunicorn.workers.ggevent import GeventWorker
from gunicorn.workers.gthread import ThreadWorker

# A pause above 0 resumes the greenlet in the event loop's next cycle, after the loop has polled for I/O:
# `gevent.sleep(0)` may resume it before that (gevent's documentation), ahead of connections whose requests
# arrived meanwhile.
YIELD_SECONDS = 1e-6


class BalancedThreadWorker(ThreadWorker):
    """Accepts only while fewer of its new connections are in its threads than it has threads. A connection is
    new until its first request is answered, or gunicorn stops waiting for it (5 s; it then waits in the
    poller and counts again once it sends): it holds a thread while gunicorn waits and while the request
    is served. So a worker that just took its share of a burst of connections leaves the rest in the
    listen queue for the other workers. Requests of kept-alive connections do not
    count: under a steady load every thread serves them, and counting them would leave a new connection
    in the queue until a thread happens to be free when the worker looks, which can take seconds."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.unanswered: set = set()  # new connections submitted to the thread pool; main thread only

    def enqueue_req(self, conn) -> None:
        new = not conn.initialized  # read before the pool's thread can initialize it
        super().enqueue_req(conn)  # raises if the pool is shut down: then nothing was counted
        if new:
            self.unanswered.add(conn)
            if len(self.unanswered) >= self.cfg.threads:
                super().set_accept_enabled(False)

    def accept(self, listener) -> None:
        # select() returned the listener's event with others; one of those may have taken the last thread.
        if self._accepting:
            super().accept(listener)

    def finish_request(self, conn, fs) -> None:
        # Runs on the main thread; the main loop then re-enables accepting through set_accept_enabled.
        self.unanswered.discard(conn)
        super().finish_request(conn, fs)

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled and len(self.unanswered) < self.cfg.threads)


class FairGeventWorker(GeventWorker):
    """gunicorn's gevent worker (the project's default), letting the worker's other connections go first
    after each request.

    A keep-alive connection is served by one greenlet in a loop: answer, read the next request, answer. When
    the client's next request is already in the socket (a fast client, or pipelining), nothing in that loop
    waits, so the greenlet never yields and the worker's other connections wait until it does: a long tail
    of slow answers under many keep-alive connections. A short sleep after each request puts the greenlet
    behind the others that are ready, which cuts the tail at the same rate (measured in docs/workers.md)."""

    def handle_request(self, listener_name, req, sock, addr) -> None:
        super().handle_request(listener_name, req, sock, addr)
        gevent.sleep(YIELD_SECONDS)
