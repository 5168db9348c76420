"""Load from plain Python when wrk is absent: one process per core at most, each driving its share of the
keep-alive connections from one selector loop over raw sockets. Each process writes `STATUS BODY` lines and
its latencies (array of doubles, ms) to files."""

from __future__ import annotations

import multiprocessing
import os
import selectors
import socket
import time
from array import array
from pathlib import Path

from uniquerand.bench.load import LoadResult, children_cpu_seconds
from uniquerand.bench.server import BenchError


class _Connection:
    def __init__(self, port: int, request: bytes) -> None:
        self.port = port
        self.request = request
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.sent_at = 0.0

    def open(self, selector: selectors.BaseSelector) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        selector.register(self.sock, selectors.EVENT_READ, self)

    def close(self, selector: selectors.BaseSelector) -> None:
        if self.sock is not None:
            selector.unregister(self.sock)
            self.sock.close()
            self.sock = None

    def send(self) -> None:
        self.buffer = b""
        self.sent_at = time.perf_counter()
        self.sock.sendall(self.request)

    def response(self) -> tuple[int, bytes, bool] | None:
        """(status, body, keep_alive) once the whole response is in the buffer."""
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        head = self.buffer[:head_end].decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
        length = int(headers.get("content-length", "0"))
        if len(self.buffer) < head_end + 4 + length:
            return None
        body = self.buffer[head_end + 4 : head_end + 4 + length]
        return int(head[0].split()[1]), body, headers.get("connection", "").lower() != "close"


def _restart(connection: _Connection, selector: selectors.BaseSelector) -> None:
    """A new connection and request in place of one the server closed, reset or left unanswered."""
    connection.close(selector)
    connection.sent_at = time.perf_counter()
    try:
        connection.open(selector)
        connection.send()
    except OSError:
        # Left closed: the timeout sweep tries again, so a refusing server cannot spin this loop.
        connection.close(selector)


def drive(port: int, path: str, connections: int, duration: float, timeout: float, out_dir: str, index: int) -> None:
    """Module-level target of one load process: a closed loop on `connections` connections."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: keep-alive\r\n\r\n".encode()
    selector = selectors.DefaultSelector()
    latencies = array("d")
    errors = 0
    pool = [_Connection(port, request) for _ in range(connections)]
    deadline = time.perf_counter() + duration
    with open(Path(out_dir) / f"bodies-{index}.txt", "w", encoding="utf-8") as out:
        for connection in pool:
            _restart(connection, selector)
        while time.perf_counter() < deadline:
            for key, _ in selector.select(timeout=0.1):
                connection: _Connection = key.data
                try:
                    chunk = connection.sock.recv(65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    errors += 1
                    _restart(connection, selector)
                    continue
                connection.buffer += chunk
                parsed = connection.response()
                if parsed is None:
                    continue
                status, body, keep_alive = parsed
                latencies.append((time.perf_counter() - connection.sent_at) * 1000)
                out.write(f"{status} {body.decode('utf-8', 'replace').replace(chr(10), '')}\n")
                if time.perf_counter() >= deadline:
                    continue
                if keep_alive:
                    try:
                        connection.send()
                    except OSError:
                        errors += 1
                        _restart(connection, selector)
                else:
                    _restart(connection, selector)
            now = time.perf_counter()
            for connection in pool:
                # An open connection gets `timeout` to answer; a closed one is retried every 0.1 s.
                if now - connection.sent_at > (timeout if connection.sock is not None else 0.1):
                    errors += connection.sock is not None
                    _restart(connection, selector)
        for connection in pool:
            connection.close(selector)
    with open(Path(out_dir) / f"latencies-{index}.bin", "wb") as raw:
        latencies.tofile(raw)
    with open(Path(out_dir) / f"errors-{index}.txt", "w") as count:
        count.write(str(errors))


def percentile(ordered: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


def run_python(port: int, path: str, concurrency: int, duration: int, timeout: float, bodies_dir: Path) -> LoadResult:
    bodies_dir.mkdir(parents=True, exist_ok=True)
    processes = max(1, min(os.cpu_count() or 1, concurrency))
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=drive, args=(port, path, share, duration, timeout, str(bodies_dir), i), daemon=True)
        for i, share in enumerate(shares)
    ]
    cpu_before = children_cpu_seconds()
    started = time.perf_counter()
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=duration + timeout + 30)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join(timeout=10)
    elapsed = time.perf_counter() - started
    failed = [worker.exitcode for worker in workers if worker.exitcode != 0]
    if failed:
        raise BenchError(f"Python load processes exited with {failed}.")
    latencies: list[float] = []
    errors = 0
    for i in range(processes):
        chunk = array("d")
        chunk.frombytes((bodies_dir / f"latencies-{i}.bin").read_bytes())
        latencies.extend(chunk)
        errors += int((bodies_dir / f"errors-{i}.txt").read_text())
    latencies.sort()
    return LoadResult(
        generator="python",
        # The processes' start-up (spawn, imports) is not load time: count the duration they were given.
        duration=min(float(duration), elapsed),
        latency_ms={
            "p50": percentile(latencies, 0.50),
            "p95": percentile(latencies, 0.95),
            "p99": percentile(latencies, 0.99),
            "max": latencies[-1] if latencies else None,
        },
        socket_errors={"reset_or_timeout": errors} if errors else {},
        client_cpu_seconds=children_cpu_seconds() - cpu_before,
        bodies_dir=bodies_dir,
    )
