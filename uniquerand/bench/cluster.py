"""A throwaway PostgreSQL cluster from the Debian binaries, or a server reached by URL: what `flask bench
--postgres` measures the PostgreSQL stages on, and what the test suite runs its PostgreSQL tests against
(tests/postgres.py). initdb and pg_ctl run as the user `postgres` when root runs them (both refuse root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from uniquerand.bench.server import free_port

# The settings this module writes, included from the cluster's postgresql.conf.
SETTINGS = "uniquerand.conf"


class ClusterError(RuntimeError):
    """A server command failed, or a server this process did not start was asked to stop or restart."""


def default_base(purpose: str) -> Path:
    """Where the clusters of `purpose` live: mode 0o755, so that the user `postgres` reaches its cluster below
    it when root starts one (pytest's and mkdtemp's folders are 0o700). One per user: another user could not
    create folders in it."""
    return Path(tempfile.gettempdir()) / f"uniquerand-{purpose}-postgres-{os.geteuid()}"


def bin_folder() -> Path:
    """/usr/lib/postgresql/<highest version>/bin, where Debian installs the server's programs."""
    found = glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")
    if not found:
        raise ClusterError(
            "no PostgreSQL server under /usr/lib/postgresql/*/bin: install it (Debian/Ubuntu: "
            "apt-get install postgresql) or name a server by URL"
        )
    return Path(max(found, key=lambda path: [int(part) for part in Path(path).parts[-3].split(".")])).parent


def _run(tool: str, *args: str, folder: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Runs initdb or pg_ctl as the owner of `folder`: `postgres` when root runs it."""
    command = [str(bin_folder() / tool), *args]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    # The cwd must be readable by that user; pg_ctl is always given -l, or the server inherits our pipes.
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=timeout, check=False)


class Cluster:
    """A PostgreSQL server: a cluster this process creates in a folder of its own below `base` (`Cluster()`,
    then `start()`), or a server reached by URL (`Cluster(url)`), on which it only creates and drops databases.

    `settings`: more lines for the cluster's postgresql.conf (e.g. shared_preload_libraries)."""

    def __init__(
        self, server_url: str | None = None, salt: str | None = None, *, base: Path | None = None, settings: str = ""
    ) -> None:
        self.server_url = server_url
        # Part of every database name: an external server still holds the databases of earlier sessions.
        self.salt = salt or secrets.token_hex(4)
        self.base = base or default_base("bench")
        self.settings = settings
        self.folder: Path | None = None
        self.port = 0
        self._opener_pid = os.getpid()
        self._created: set[str] = set()

    @property
    def is_local(self) -> bool:
        return self.server_url is None

    def url(self, dbname: str = "postgres") -> str:
        if self.server_url is None:
            return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"
        return urlunsplit(urlsplit(self.server_url)._replace(path=f"/{dbname}"))

    def start(self) -> None:
        """Creates the cluster and starts its server (default settings, fsync on) on a free port."""
        self.base.mkdir(exist_ok=True)
        self.base.chmod(0o755)
        _remove_abandoned_clusters(self.base)
        self.folder = Path(tempfile.mkdtemp(prefix="cluster-", dir=self.base))
        (self.folder / "opener").write_text(str(os.getpid()))
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        data = str(self.folder / "data")
        # --no-sync only spares initdb's own flushes; the server keeps fsync on.
        initdb = ("-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C")
        self._check(_run("initdb", *initdb, folder=self.folder, timeout=120))
        with open(self.folder / "data" / "postgresql.conf", "a") as conf:
            conf.write(f"include '{SETTINGS}'\n")
        for attempt in range(3):
            self.port = free_port()
            (self.folder / "data" / SETTINGS).write_text(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.folder}'\n"
                # Several gunicorns, each with a connection pool, share this server.
                "max_connections = 200\nshared_buffers = 128MB\n" + self.settings
            )
            started = self._pg_ctl("start", "-w", "-t", "30", "-l", self._log)
            # Another process may bind the free port first: pick another one.
            if started.returncode == 0 or "could not bind" not in self.log_tail() or attempt == 2:
                return self._check(started)

    def stop(self) -> None:
        self._check(self._pg_ctl("stop", "-m", "fast", "-w", "-t", "30"))

    def stop_immediate(self) -> None:
        """Stops the server as a crash would: no checkpoint, clients cut off; `start_again()` recovers."""
        self._check(self._pg_ctl("stop", "-m", "immediate", "-w", "-t", "30"))

    def start_again(self) -> None:
        self._check(self._pg_ctl("start", "-w", "-t", "30", "-l", self._log))

    def restart_immediate(self) -> None:
        """A crash and a recovery: every connection is cut, committed transactions survive."""
        self._check(self._pg_ctl("restart", "-m", "immediate", "-w", "-t", "30", "-l", self._log))

    @contextlib.contextmanager
    def unavailable(self) -> Iterator[None]:
        """The server down (as after a crash) for the body of the `with`, and back up after it in any case."""
        self.stop_immediate()
        try:
            yield
        finally:
            self.start_again()

    def sql(self, statement: str, dbname: str = "postgres", params: Sequence[Any] | None = None) -> list[tuple]:
        """Runs one statement in autocommit on its own connection; its rows, if it returns any."""
        # Imported here, not with this module: psycopg picks its wait function when imported (PERF-NOTES.md).
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=10) as connection:
            cursor = connection.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

    def new_database(self, name: str) -> str:
        """Creates database `name` unless it exists, even if other processes race to create it; its URL."""
        from psycopg import errors

        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"not a plain database name: {name!r}")
        if not self.sql("SELECT 1 FROM pg_database WHERE datname = %s", params=[name]):
            try:
                self.sql(f'CREATE DATABASE "{name}"')
                self._created.add(name)
            # Sequential creators see DuplicateDatabase, concurrent ones the catalog's UniqueViolation.
            except (errors.DuplicateDatabase, errors.UniqueViolation):
                pass
        return self.url(name)

    def postmaster_pid(self) -> int | None:
        """The PID of the server of a cluster this process started (the first line of postmaster.pid)."""
        return _postmaster_pid(self._local_folder())

    def log_tail(self, lines: int = 40) -> str:
        log = self.folder / "server.log" if self.folder else None
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log and log.exists() else ""

    def close(self) -> None:
        """Stops and removes a cluster this process started; drops the databases it created on a server
        reached by URL. Does nothing in a forked child, which shares the server with its parent."""
        if os.getpid() != self._opener_pid:
            return
        if self.folder is not None:
            folder, self.folder = self.folder, None
            _remove_cluster(folder)
        else:
            for name in sorted(self._created):
                self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._created.clear()

    @property
    def _log(self) -> str:
        return str(self._local_folder() / "server.log")

    def _local_folder(self) -> Path:
        if self.folder is None:
            raise ClusterError(f"needs a cluster this process started, not the server at {self.url()}")
        return self.folder

    def _pg_ctl(self, action: str, *args: str) -> subprocess.CompletedProcess[str]:
        folder = self._local_folder()
        return _run("pg_ctl", action, "-D", str(folder / "data"), *args, folder=folder, timeout=60)

    def _check(self, result: subprocess.CompletedProcess[str]) -> None:
        if result.returncode != 0:
            output = f"{result.stdout}{result.stderr}".strip()
            raise ClusterError(f"{' '.join(result.args)} exited with {result.returncode}: {output}\n{self.log_tail()}")


def _postmaster_pid(folder: Path) -> int | None:
    try:
        return int((folder / "data" / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _remove_cluster(folder: Path) -> None:
    """Stops the cluster's server (pg_ctl, which signals the PID of its postmaster.pid; SIGKILL to that PID if
    it outlives pg_ctl) and removes its folder."""
    pid = _postmaster_pid(folder)
    if pid is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            _run("pg_ctl", "stop", "-D", str(folder / "data"), "-m", "immediate", "-w", folder=folder, timeout=60)
        with contextlib.suppress(OSError):  # gone already
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"postgres"):
                os.kill(pid, signal.SIGKILL)
    shutil.rmtree(folder, ignore_errors=True)


def _remove_abandoned_clusters(base: Path) -> None:
    """Removes the clusters of sessions that died without closing them (killed, or ended by os._exit)."""
    for folder in base.glob("cluster-*"):
        with contextlib.suppress(OSError, ValueError):
            opener = int((folder / "opener").read_text())
            try:
                os.kill(opener, 0)
            except ProcessLookupError:
                _remove_cluster(folder)
