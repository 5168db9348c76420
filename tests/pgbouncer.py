"""A real PgBouncer (Debian's package) in front of the suite's PostgreSQL, for the tests of
DATABASE_POOLER=pgbouncer: what transaction pooling breaks (a server connection shared by the transactions of
several clients) only shows through the real pooler.

It listens on a free port of 127.0.0.1, lets every database through to the suite's server (trust, like the
server itself), runs as `postgres` when root starts it (PgBouncer refuses root), and is stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from uniquerand.bench.server import free_port


class PgBouncer:
    """PgBouncer in `pool_mode`, with `pool_size` server connections per database and user: far fewer than the
    app's client connections, so that one server connection serves the transactions of many of them."""

    def __init__(self, upstream_url: str, pool_mode: str, pool_size: int = 2, ignore_options: bool = False) -> None:
        base = Path(tempfile.gettempdir()) / f"uniquerand-test-pgbouncer-{os.geteuid()}"
        base.mkdir(exist_ok=True)
        base.chmod(0o755)
        self.folder = Path(tempfile.mkdtemp(prefix="pgbouncer-", dir=base))
        self.folder.chmod(0o755)
        upstream = urlsplit(upstream_url)
        self._upstream = upstream
        self.port = free_port()
        # A server reached by TEST_POSTGRES_URL may want the password its URL gives.
        password = f" password={upstream.password}" if upstream.password else ""
        ignored = "ignore_startup_parameters = options\n" if ignore_options else ""
        (self.folder / "users.txt").write_text(f'"{upstream.username or "postgres"}" ""\n')
        (self.folder / "pgbouncer.ini").write_text(
            f"[databases]\n* = host={upstream.hostname} port={upstream.port or 5432}{password}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.folder / 'users.txt'}\n"
            f"pool_mode = {pool_mode}\ndefault_pool_size = {pool_size}\nmax_client_conn = 500\n{ignored}"
            f"logfile = {self.folder / 'pgbouncer.log'}\n"
        )
        if os.geteuid() == 0:
            for path in (self.folder, *self.folder.iterdir()):
                shutil.chown(path, "postgres", "postgres")
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [shutil.which("pgbouncer") or "/usr/sbin/pgbouncer", str(self.folder / "pgbouncer.ini")]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=2) as connection:
                    connection.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PgBouncer did not start:\n{self.log_tail()}") from None
                time.sleep(0.1)

    def url(self, dbname: str) -> str:
        """The URL of database `dbname` of the upstream server, through this PgBouncer."""
        netloc = f"{self._upstream.username or 'postgres'}@127.0.0.1:{self.port}"
        return urlunsplit(self._upstream._replace(netloc=netloc, path=f"/{dbname}"))

    def log_tail(self, lines: int = 20) -> str:
        log = self.folder / "pgbouncer.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

    def stop(self) -> None:
        """Stops PgBouncer (the session it was started in: `runuser` and PgBouncer) by PID; removes its folder."""
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)
