"""The project's thread worker (uniquerand/worker.py, the alternative to the default gevent worker): it
accepts a connection only while fewer of its new connections (first request not answered yet) than its
threads are in its threads.

A connection that sends nothing holds a thread while gunicorn waits for its request (up to 5 s), which
makes "every thread of a worker is busy" a state a test can set up and hold.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
KEEP_ALIVE_REQUEST = REQUEST.replace(b"Connection: close", b"Connection: keep-alive")


def socket_inodes(port: int, state: str) -> set[str]:
    """Inodes of the IPv4 sockets on local `port` in TCP `state` ("01" established, "0A" listening). A
    connection still in the listen queue has inode 0: no process holds it yet."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
            inodes.add(fields[9])
    return inodes


def open_files(pid: int) -> dict[str, str]:
    """File descriptor number -> what it points to (`socket:[inode]`, `anon_inode:[eventpoll]`, a path)."""
    files = {}
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            files[entry.name] = os.readlink(entry)
    return files


def accepted_connections(pid: int, port: int) -> int:
    """Connections to `port` that process `pid` has accepted."""
    return len(socket_fds(pid, port, "01"))


def polled_fds(pid: int) -> set[str]:
    """The file descriptors of process `pid` that its epoll pollers watch."""
    polled = set()
    for fd, target in open_files(pid).items():
        if target == "anon_inode:[eventpoll]":
            with contextlib.suppress(OSError):
                lines = Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines()
                polled |= {line.split()[1] for line in lines if line.startswith("tfd:")}
    return polled


def socket_fds(pid: int, port: int, state: str) -> set[str]:
    """The file descriptors of process `pid` for its sockets on local `port` in TCP `state`."""
    sockets = {f"socket:[{inode}]" for inode in socket_inodes(port, state)}
    return {fd for fd, target in open_files(pid).items() if target in sockets}


def polls_listener(pid: int, port: int) -> bool:
    """Whether worker `pid` has the listening socket in its poller, i.e. has booted and would accept."""
    return bool(socket_fds(pid, port, "0A") & polled_fds(pid))


def start_ready(make_server, **options):
    """A server of this worker class whose every worker is booted and accepting: a worker still loading the
    app would leave the connections of these tests to the others."""
    server = make_server(env={"UNIQUERAND_WORKER_CLASS": "uniquerand.worker.BalancedThreadWorker"}, **options)
    assert wait_for(lambda: all(polls_listener(pid, server.port) for pid in server.worker_pids()), timeout=30)
    return server


def accepted_per_worker(server) -> list[int]:
    return sorted(accepted_connections(pid, server.port) for pid in server.worker_pids())


def wait_for(condition, timeout: float = 4.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def response_status(sock: socket.socket) -> int:
    """The status of the next response on `sock`, read whole (head, then Content-Length bytes of body), so
    that a kept-alive connection's next response starts clean."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "the server closed the connection without answering"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    missing = int(lengths[0]) - len(body) if lengths else 0
    while missing > 0:
        chunk = sock.recv(missing)
        assert chunk, "the server closed the connection in the middle of a response"
        missing -= len(chunk)
    return int(head.split()[1])


def test_connections_that_arrive_together_spread_over_every_worker(make_server):
    # gunicorn's own gthread worker accepts whatever it can: here 24 of 32 benchmark connections once
    # landed on one of 4 workers, whose 4 threads then queued them while the others idled.
    server = start_ready(make_server, workers=4, threads=2)
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(8)]
    try:
        assert wait_for(lambda: sum(accepted_per_worker(server)) == 8), accepted_per_worker(server)
        assert accepted_per_worker(server) == [2, 2, 2, 2]
    finally:
        for sock in silent:
            sock.close()


def test_a_connection_waits_for_a_free_thread_and_is_then_served(make_server):
    server = start_ready(make_server, workers=1, threads=1)
    (worker,) = server.worker_pids()
    holder = socket.create_connection(("127.0.0.1", server.port))
    waiting = socket.create_connection(("127.0.0.1", server.port))
    try:
        waiting.sendall(REQUEST)
        assert wait_for(lambda: accepted_connections(worker, server.port) >= 1)
        # The only thread waits for `holder`'s request: the worker leaves `waiting` in the listen queue.
        assert not wait_for(lambda: accepted_connections(worker, server.port) > 1, timeout=0.5)
        holder.sendall(REQUEST)
        assert response_status(holder) == 200
        # The thread is free again: the waiting connection is accepted and answered, not starved.
        assert response_status(waiting) == 200
    finally:
        holder.close()
        waiting.close()


def test_kept_alive_connections_hold_no_thread(make_server):
    # More idle keep-alive connections than threads: each is answered in turn, and a new one is still
    # accepted, since a kept-alive connection between requests does not count as a busy thread.
    server = start_ready(make_server, workers=1, threads=1)
    kept = []
    try:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(KEEP_ALIVE_REQUEST)
            assert response_status(sock) == 200
            kept.append(sock)
        (worker,) = server.worker_pids()
        assert accepted_connections(worker, server.port) == 3
        assert server.get("/healthz")[0] == 200
    finally:
        for sock in kept:
            sock.close()


def test_a_new_connection_is_accepted_while_every_thread_serves_a_kept_alive_one(make_server):
    # Under a steady load every thread serves requests of kept-alive connections. Counting those as busy
    # threads once left a new connection in the listen queue until a thread happened to be free when the
    # worker looked: the first responses of a benchmark's connections took up to 1.6 s.
    server = start_ready(make_server, workers=1, threads=1)
    (worker,) = server.worker_pids()
    kept = socket.create_connection(("127.0.0.1", server.port))
    new = None
    try:
        kept.sendall(KEEP_ALIVE_REQUEST)
        assert response_status(kept) == 200
        (kept_fd,) = socket_fds(worker, server.port, "01")
        assert wait_for(lambda: kept_fd in polled_fds(worker)), "not kept alive"
        # Half a request: the poller hands the connection to the only thread, which waits for the rest.
        kept.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert wait_for(lambda: kept_fd not in polled_fds(worker)), "not handed to the thread"
        new = socket.create_connection(("127.0.0.1", server.port))
        new.sendall(REQUEST)
        assert wait_for(lambda: accepted_connections(worker, server.port) == 2), "left in the listen queue"
        kept.sendall(b"Host: 127.0.0.1\r\n\r\n")
        assert response_status(kept) == 200
        assert response_status(new) == 200
    finally:
        kept.close()
        if new is not None:
            new.close()
