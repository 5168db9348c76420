"""The default worker (uniquerand.worker.FairGeventWorker): one connection whose requests keep arriving
does not hold its worker; the worker's other connections are answered in between.

A connection pipelines a few hundred requests in one write, so that its next request is always already in
the socket; once their first answer arrives, a second connection sends one request. gunicorn's own gevent
worker answers every pipelined request first (their greenlet never has to wait, so never yields); this
worker answers the second connection after one or two more of them. The check reads which responses had
arrived when the second connection's came, not how long anything took.
"""

from __future__ import annotations

import socket

import pytest

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
PIPELINED = 300  # ~60 kB of responses: well inside a socket's buffer, so the server never waits to write


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"}\n"):  # /healthz's body, the end of a response
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    return data


def arrived(sock: socket.socket) -> int:
    """Responses readable on `sock` right now, without waiting."""
    sock.setblocking(False)  # with a timeout set, recv would wait for data up to the timeout
    data = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return data.count(b"HTTP/1.1 200")
        if not chunk:
            return data.count(b"HTTP/1.1 200")
        data += chunk


@pytest.mark.parametrize(("worker_class", "fair"), [("uniquerand.worker.FairGeventWorker", True), ("gevent", False)])
def test_a_connection_whose_requests_keep_arriving_does_not_hold_the_worker(make_server, worker_class, fair):
    server = make_server(workers=1, env={"UNIQUERAND_WORKER_CLASS": worker_class})
    busy = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    other = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        for sock in (busy, other):  # both connections accepted and waiting for their next request
            sock.sendall(REQUEST)
            read_response(sock)
        busy.sendall(REQUEST * PIPELINED)
        first = busy.recv(65536)  # the worker is answering the pipelined requests now
        other.sendall(REQUEST)
        read_response(other)
        before = first.count(b"HTTP/1.1 200") + arrived(busy)
    finally:
        busy.close()
        other.close()
    if fair:
        assert before < PIPELINED / 2, f"{before} of {PIPELINED} pipelined responses were sent before the other one"
    else:
        # gunicorn's own gevent worker, to show the test can fail: every pipelined request went first.
        assert before == PIPELINED
