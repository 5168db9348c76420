"""Real servers and plain HTTP clients for end-to-end tests (127.0.0.1 only, bounded in time)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The stages `uniquerand.stages.build_stages` serves, for parametrizing tests before any app exists.
STAGE_NAMES = ("v1", "v2", "v3", "v4", "v5")


def v5_store(folder: Path, spaces: dict, block_size: int, lock_timeout: float = 10.0):
    """/v5's store on SQLite in `folder`, as `uniquerand.stages.build_stages` makes it."""
    from uniquerand.storage.contract import StoreSettings
    from uniquerand.storage.leased import LeasedCounterStore
    from uniquerand.storage.sqlite.counters import SqliteCounters

    settings = StoreSettings(Path(folder), spaces, "v5", lock_timeout)
    return LeasedCounterStore(settings, SqliteCounters(settings), block_size=block_size)


def v3_codes(database: Path, kind: str) -> set[int]:
    """/v3's issued codes of a type, read from its file: its settled and its recent table, which never share
    a code."""
    # One statement, one snapshot: a settling transaction may move codes between two separate reads.
    query = f"SELECT code, 0 FROM issued_{kind} UNION ALL SELECT code, 1 FROM recent_{kind}"
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = connection.execute(query).fetchall()
    finally:
        connection.close()
    settled = {code for code, recent in rows if not recent}
    recent = {code for code, recent in rows if recent}
    assert not settled & recent, f"{len(settled & recent)} codes are both settled and recent"
    return settled | recent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(
    port: int, path: str, timeout: float = 30.0, headers: dict[str, str] | None = None
) -> tuple[int, dict, dict[str, str]]:
    """One GET on a fresh connection (so that load spreads over every worker): status, JSON body, headers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        raw = response.read()
        headers = {key.lower(): value for key, value in response.getheaders()}
        return response.status, json.loads(raw) if raw else {}, headers
    finally:
        connection.close()


def put_json(
    port: int, path: str, body: object, timeout: float = 30.0, headers: dict[str, str] | None = None
) -> tuple[int, dict]:
    """One PUT of `body` as JSON on a fresh connection: status and JSON body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("PUT", path, json.dumps(body), {"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def children(pid: int) -> list[int]:
    """The PIDs whose parent is `pid` (gunicorn's workers, for its master)."""
    result = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after the last ')'.
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        # A killed child stays a zombie until its parent reaps it: it is no longer a worker.
        if int(parent) == pid and state != "Z":
            result.append(int(entry))
    return result


class GunicornServer:
    """`gunicorn wsgi:app` with the project's config, on a free 127.0.0.1 port and a given instance folder."""

    def __init__(
        self,
        instance_path: Path,
        env: dict[str, str] | None = None,
        workers: int = 3,
        threads: int = 4,
        startup_timeout: float = 30.0,
        app: str = "wsgi:app",
    ) -> None:
        self.instance_path = instance_path
        self.app = app
        self.env = env or {}
        self.workers = workers
        self.threads = threads
        self.startup_timeout = startup_timeout
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.log_path = instance_path.parent / "gunicorn.log"

    def start(self) -> None:
        self.port = free_port()
        env = {**os.environ, "UNIQUERAND_INSTANCE_PATH": str(self.instance_path), **self.env}
        command = [
            sys.executable, "-m", "gunicorn", self.app,
            "--bind", f"127.0.0.1:{self.port}",
            "--workers", str(self.workers),
            "--threads", str(self.threads),
            "--no-control-socket",
        ]  # fmt: skip
        self.instance_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        self._wait_until_serving()

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}: {self.log()}")
            try:
                if get(self.port, "/healthz", timeout=2)[0] == 200 and len(self.worker_pids()) == self.workers:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not start within {self.startup_timeout}s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def worker_pids(self) -> list[int]:
        return children(self.process.pid)

    def get(self, path: str, timeout: float = 30.0):
        return get(self.port, path, timeout)

    def kill9(self) -> None:
        """SIGKILL to the master and every worker at once: a crash at an arbitrary instant."""
        pids = [self.process.pid, *self.worker_pids()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids[1:]) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self, graceful: bool = True) -> None:
        """SIGTERM (graceful: workers finish their requests and run their exit hooks), or SIGQUIT (gunicorn's quick
        shutdown: a gevent worker's graceful stop waits out its 1 s loop, which adds up over a test suite)."""
        if self.process is None or self.process.poll() is not None:
            return
        workers = self.worker_pids()
        self.process.send_signal(signal.SIGTERM if graceful else signal.SIGQUIT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def hammer(port: int, paths: Iterable[str], concurrency: int = 16, timeout: float = 30.0) -> list[tuple]:
    """GETs every path from `concurrency` threads, each on a fresh connection; returns (status, body) or
    (None, error) for requests that got no answer (the server died under them)."""

    def fetch(path: str):
        try:
            status, body, _ = get(port, path, timeout)
            return status, body
        except (OSError, http.client.HTTPException, ValueError) as err:
            return None, repr(err)

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(fetch, paths))


def draw_space_to_its_end(ports: list[int], name: str, size: int, concurrency: int = 12) -> list[int]:
    """Singles and batches of 5 from the named space through every server of `ports` at once (`concurrency`
    threads in all, fresh connections), then singles, until `size` numbers came or 20 rounds passed; every
    number served, in no particular order. Only the answers of a space's end or of a busy store may refuse."""
    share = len(ports)
    paths = [f"/v5/spaces/{name}/random"] * (1000 // share) + [f"/v5/spaces/{name}/random?count=5"] * (200 // share)
    numbers: list[int] = []
    for _ in range(20):
        with ThreadPoolExecutor(share) as pool:
            rounds = list(pool.map(hammer, ports, [paths] * share, [max(1, concurrency // share)] * share))
        for status, body in (answer for answers in rounds for answer in answers):
            assert status in (200, 503), body
            if status == 200:
                numbers += body.get("numbers", [body.get("number")])
            else:
                assert body["code"] in ("held_elsewhere", "space_exhausted", "insufficient_remaining", "store_busy")
        if len(numbers) >= size:
            break
        paths = [f"/v5/spaces/{name}/random"] * (100 // share)
    return numbers


def finish_process(process, timeout: float = 30.0) -> None:
    """Joins a helper process within `timeout`; one still running then is killed, so no test leaks it."""
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join(10)
