"""The server under test: a gunicorn the bench starts and stops itself, or one already running on localhost."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import runpy
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from uniquerand.bench import procfs

REPO = Path(__file__).resolve().parents[2]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


class BenchError(Exception):
    """The bench cannot go on; the message says why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(port: int, path: str, timeout: float = 10.0) -> tuple[int, object]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        connection.close()


def gunicorn_defaults() -> dict[str, object]:
    """workers, threads and worker class as the project's gunicorn.conf.py sets them (for the report)."""
    values = runpy.run_path(str(REPO / "gunicorn.conf.py"))
    return {key: values.get(key) for key in ("workers", "threads", "worker_class")}


class Server:
    """What the bench needs from a server: where it listens and which processes serve it."""

    port: int
    description: dict[str, object]

    def worker_pids(self) -> list[int]:
        raise NotImplementedError

    def stop(self) -> None:
        """Stops what the bench started (nothing for a server it did not start)."""


class ExternalServer(Server):
    """A server someone else runs (`--url`); its workers are found through its listening socket."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname not in LOCAL_HOSTS:
            raise BenchError(f"--url must be http://127.0.0.1:PORT or http://localhost:PORT, got {url!r}.")
        self.port = parts.port or 80
        try:
            status, _ = get_json(self.port, "/healthz")
        except OSError as err:
            raise BenchError(f"No server answers at {url}: {err}.") from err
        if status != 200:
            raise BenchError(f"{url}/healthz answered {status}, not 200.")
        self.description = {"mode": "external", "url": f"http://127.0.0.1:{self.port}", "workers": None}
        self.description["workers"] = len(self.worker_pids()) or None

    def worker_pids(self) -> list[int]:
        return procfs.workers_of_listener(self.port)


class GunicornServer(Server):
    """`gunicorn wsgi:app` with the project's gunicorn.conf.py on a free 127.0.0.1 port and a given instance folder.

    Stopped by PID: SIGTERM to the master, then SIGKILL to it and every worker it had if they outlive the wait.
    """

    def __init__(
        self,
        instance_path: Path,
        workers: int | None,
        threads: int | None,
        log_path: Path,
        worker_class: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.instance_path = instance_path
        self.log_path = log_path
        self.env = env or {}
        defaults = gunicorn_defaults()
        self.workers = workers or int(defaults["workers"])
        self.threads = threads or int(defaults["threads"])
        self.worker_class = worker_class or str(defaults["worker_class"])
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self._known_workers: set[int] = set()
        self.description = {
            "mode": "own gunicorn",
            "url": f"http://127.0.0.1:{self.port}",
            "workers": self.workers,
            "threads": self.threads,
            "worker_class": self.worker_class,
        }

    def start(self, timeout: float = 60.0) -> None:
        command = [sys.executable, "-m", "gunicorn", "wsgi:app", "--bind", f"127.0.0.1:{self.port}",
                   "--workers", str(self.workers), "--threads", str(self.threads), "--worker-class", self.worker_class,
                   "--no-control-socket"]  # fmt: skip
        env = {**os.environ, "UNIQUERAND_INSTANCE_PATH": str(self.instance_path), **self.env}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"gunicorn exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if get_json(self.port, "/healthz", timeout=2)[0] == 200 and len(self.worker_pids()) == self.workers:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise BenchError(f"gunicorn did not start within {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def worker_pids(self) -> list[int]:
        if self.process is None:
            return []
        pids = procfs.children(self.process.pid)
        self._known_workers.update(pids)
        return pids

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None:
            return
        self.worker_pids()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for pid in self._known_workers:
            if procfs.alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def wait_until_idle(server: Server, timeout: float, quiet_cpu: float = 0.05, interval: float = 0.2) -> float | None:
    """Waits until no connection to the server is open or owed an answer and its workers' CPU is quiet
    twice in a row: requests queued by the last row must not be measured in the next one.

    Returns the seconds waited, or None if the server was still busy at the timeout.
    """
    start = time.monotonic()
    quiet = 0
    previous = procfs.cpu_seconds(server.worker_pids())
    while time.monotonic() - start < timeout:
        time.sleep(interval)
        current = procfs.cpu_seconds(server.worker_pids())
        calm = current - previous < quiet_cpu * interval and procfs.busy_connections(server.port) == 0
        previous = current
        quiet = quiet + 1 if calm else 0
        if quiet >= 2:
            return time.monotonic() - start
    return None
