"""The PostgreSQL database the bench's second server keeps /v3-/v5 in: a throwaway cluster it starts itself
(`--postgres`) or a database it is given (`--database-url`), emptied of the stages' tables before each prefill
level, and read for what the server did (pg_stat_database, pg_stat_wal, pg_stat_statements, its processes'
CPU time). Only tables named uniquerand_* are ever dropped, and only in a database that held none at the start.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from uniquerand.bench import procfs
from uniquerand.bench.cluster import Cluster, ClusterError, bin_folder
from uniquerand.bench.server import LOCAL_HOSTS, BenchError

NAME = "uniquerand_bench"
# What the throwaway cluster adds to the test suite's settings: statements are counted per statement.
CLUSTER_SETTINGS = "shared_preload_libraries = 'pg_stat_statements'\n"
# One snapshot: a connection (its start-up transaction) and one SELECT, both counted as commits of the
# database once that connection closes, that is within the next interval: subtracted from it.
SNAPSHOT_COMMITS = 2
SNAPSHOT = """
SELECT d.xact_commit, d.xact_rollback, d.tup_inserted, d.tup_updated, d.tup_deleted,
       w.wal_records, w.wal_fpi, w.wal_bytes, w.wal_sync, pg_current_wal_flush_lsn() - '0/0'::pg_lsn,
       (SELECT count(*) FROM pg_stat_activity a WHERE a.datid = d.datid AND a.pid != pg_backend_pid()){statements}
FROM pg_stat_database d CROSS JOIN pg_stat_wal w WHERE d.datname = current_database()
"""
# Per statement text, its calls, top-level statements of this database only; not the snapshot's own.
STATEMENTS = """,
       (SELECT json_object_agg(query, calls) FROM (
            SELECT query, sum(calls) AS calls FROM pg_stat_statements
            WHERE dbid = d.datid AND toplevel AND query NOT LIKE '%pg_stat_database%' GROUP BY query) s)"""
OUR_TABLES = r"""
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relname LIKE 'uniquerand\_%' AND pg_table_is_visible(c.oid) ORDER BY 1
"""

WRITTEN_TABLES = r"""
SELECT relname FROM pg_stat_user_tables
WHERE relname LIKE 'uniquerand\_%' AND (n_dead_tup > 0 OR n_ins_since_vacuum > 0) ORDER BY 1
"""


@dataclass
class Snapshot:
    """The server's counters at one moment; `statements` is None without pg_stat_statements."""

    counters: dict[str, int]
    statements: dict[str, int] | None
    cpu_seconds: float | None  # the server's processes, when they run on this machine
    connections: int = 0  # open to the database, other than the snapshot's own
    wal_folder: Path | None = None  # pg_wal of a cluster the bench started, where pg_waldump reads it

    def since(self, before: Snapshot, breakdown: bool = True) -> Activity:
        """What happened between `before` and this snapshot; with `breakdown`, the WAL is read too."""
        counters = {key: value - before.counters[key] for key, value in self.counters.items()}
        counters["xact_commit"] -= SNAPSHOT_COMMITS
        calls = None
        if self.statements is not None and before.statements is not None:
            calls = {
                query: n - before.statements.get(query, 0)
                for query, n in self.statements.items()
                if n > before.statements.get(query, 0)
            }
        cpu = None
        if self.cpu_seconds is not None and before.cpu_seconds is not None:
            cpu = self.cpu_seconds - before.cpu_seconds
        wal = None
        if breakdown:
            wal = wal_breakdown(self.wal_folder, before.counters["wal_lsn"], self.counters["wal_lsn"])
        return Activity(counters, calls, cpu, self.connections, wal)


@dataclass
class Activity:
    """What the server did between two snapshots."""

    counters: dict[str, int]
    calls: dict[str, float] | None  # per statement text (pg_stat_statements), None without it
    cpu_seconds: float | None
    connections: int = 0  # open at the end
    # From the WAL itself (pg_waldump), where the bench can read it: "commit_records" (transactions that wrote:
    # each one's COMMIT is flushed before it returns), "fpi_bytes" (full-page images, see docs/postgres-cost.md).
    wal: dict[str, int] | None = None


@dataclass
class BenchDatabase:
    url: str
    cluster: Cluster | None = None  # the throwaway cluster of --postgres
    statements: bool = False  # pg_stat_statements can be read
    created_extension: bool = False
    # Set once the database was found without uniquerand tables: only then are those that appear the bench's.
    fills: bool = False
    server_pid: int | None = None  # the postmaster, when it runs on this machine
    description: dict = field(default_factory=dict)

    @classmethod
    def open(cls, url: str | None, say: Callable[..., None]) -> BenchDatabase:
        """The database of `url` (checked to hold no uniquerand table), or with None a throwaway cluster on
        127.0.0.1 with pg_stat_statements loaded and a database of its own."""
        if url is None:
            cluster = Cluster(settings=CLUSTER_SETTINGS)
            say("starting a throwaway PostgreSQL cluster (Debian binaries, fsync on, pg_stat_statements)")
            try:
                cluster.start()
                database = cls(cluster.new_database(NAME), cluster, server_pid=cluster.postmaster_pid())
            except (ClusterError, OSError) as err:
                cluster.close()
                raise BenchError(f"--postgres: {err}") from err
        else:
            database = cls(url, server_pid=_local_postmaster(url))
        try:
            database._check()
        except BaseException:
            database.close()
            raise
        return database

    def _check(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as connection:
                found = [name for (name,) in connection.execute(OUR_TABLES).fetchall()]
                if found:
                    raise BenchError(
                        f"The database of --database-url holds uniquerand tables ({', '.join(found[:4])}): the bench "
                        "fills a database and drops the tables it made, so it needs one without them."
                    )
                self.fills = True
                self.statements = self._statements_readable(connection)
                version, fsync, synchronous, method, connections, reserved = connection.execute(
                    "SELECT current_setting('server_version'), current_setting('fsync'), "
                    "current_setting('synchronous_commit'), current_setting('wal_sync_method'), "
                    "current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int"
                ).fetchone()
        except psycopg.Error as err:
            raise BenchError(f"Cannot use the PostgreSQL database: {err}") from err
        self.description = {
            "url": redacted(self.url),
            "throwaway_cluster": self.cluster is not None,
            "server_version": version,
            "fsync": fsync,
            "server_synchronous_commit": synchronous,
            "wal_sync_method": method,
            "max_connections": connections,
            "superuser_reserved_connections": reserved,
            "pg_stat_statements": self.statements,
            "server_cpu_measured": self.server_pid is not None,
        }

    def _statements_readable(self, connection) -> bool:
        import psycopg

        installed = connection.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'").fetchall()
        try:
            if not installed:
                connection.execute("CREATE EXTENSION pg_stat_statements")
                self.created_extension = True
            connection.execute("SELECT count(*) FROM pg_stat_statements").fetchone()
            return True
        except psycopg.Error:
            # Installable but not loaded (shared_preload_libraries), or not installable: no statement counts.
            if self.created_extension:
                connection.execute("DROP EXTENSION IF EXISTS pg_stat_statements")
                self.created_extension = False
            return False

    def empty(self) -> None:
        """Drops every uniquerand_* table: those of the previous level's stores and of the calibration. No
        server may be using the database."""
        if not self.fills:
            raise BenchError("The bench drops only tables it made, in a database that held none of them.")

        def drops(connection) -> list[str]:
            return [f'DROP TABLE IF EXISTS "{name}"' for (name,) in connection.execute(OUR_TABLES).fetchall()]

        self._execute_each(drops)

    def snapshot(self) -> Snapshot:
        import psycopg

        query = SNAPSHOT.format(statements=STATEMENTS if self.statements else "")
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as connection:
                row = connection.execute(query).fetchone()
        except psycopg.Error as err:
            raise BenchError(f"Cannot read the PostgreSQL server's statistics: {err}") from err
        keys = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted", "wal_records",
                "wal_fpi", "wal_bytes", "wal_sync", "wal_lsn")  # fmt: skip
        counters = {key: int(value) for key, value in zip(keys, row, strict=False)}
        # psycopg reads json as Python objects.
        found = row[len(keys) + 1] if self.statements else None
        statements = {query: int(n) for query, n in (found or {}).items()} if self.statements else None
        cpu = procfs.tree_cpu_seconds(self.server_pid) if self.server_pid else None
        wal_folder = self.cluster.folder / "data" / "pg_wal" if self.cluster and self.cluster.folder else None
        return Snapshot(counters, statements, cpu, int(row[len(keys)]), wal_folder)

    def our_tables(self) -> list[str]:
        with self._connect() as connection:
            return [name for (name,) in connection.execute(OUR_TABLES).fetchall()]

    def set_autovacuum(self, enabled: bool) -> None:
        """Autovacuum on or off for the stages' tables (--cost turns it off and vacuums after each row, so
        that each row is charged with the cleanup it causes, not another row)."""
        setting = "RESET (autovacuum_enabled)" if enabled else "SET (autovacuum_enabled = false)"
        self.execute([f'ALTER TABLE "{name}" {setting}' for name in self.our_tables()])

    def vacuum(self, written_only: bool = True) -> None:
        """VACUUM of the stages' tables, or only of those written since their last vacuum (as the server's
        statistics know them: read after they settled)."""

        def vacuums(connection) -> list[str]:
            query = WRITTEN_TABLES if written_only else OUR_TABLES
            return [f'VACUUM "{name}"' for (name,) in connection.execute(query).fetchall()]

        self._execute_each(vacuums)

    def execute(self, statements: list[str]) -> None:
        self._execute_each(lambda connection: statements)

    def _execute_each(self, statements: Callable[[object], list[str]]) -> None:
        with self._connect() as connection:
            for statement in statements(connection):
                connection.execute(statement)

    @contextmanager
    def _connect(self) -> Iterator:
        """An autocommit connection to the database; the driver's errors as BenchError."""
        import psycopg

        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as connection:
                yield connection
        except psycopg.Error as err:
            raise BenchError(f"PostgreSQL: {err}") from err

    def close(self) -> None:
        """Leaves a given database as it was found (drops the tables and the extension the bench made); stops and
        removes a throwaway cluster."""
        try:
            if self.cluster is None and self.fills:
                self.empty()
                if self.created_extension:
                    self.execute(["DROP EXTENSION IF EXISTS pg_stat_statements"])
        finally:
            if self.cluster is not None:
                self.cluster.close()


def wal_breakdown(folder: Path | None, start: int, end: int) -> dict[str, int] | None:
    """What pg_waldump counts in the WAL between two LSNs (bytes from 0/0): the COMMIT records, and the bytes
    of full-page images; None without a WAL folder to read, or when its segments are gone already."""
    waldump = bin_folder() / "pg_waldump" if folder is not None else None
    if waldump is None or end <= start or not waldump.exists():
        return None
    command = [str(waldump), "-p", str(folder), "-s", _lsn(start), "-e", _lsn(end), "--stats=record"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        return None
    commits = re.search(r"^Transaction/COMMIT\s+(\d+)", result.stdout, re.MULTILINE)
    total = re.search(r"^Total\s+(\d+)\s+(\d+)\s+\[[^]]*\]\s+(\d+)", result.stdout, re.MULTILINE)
    if result.returncode != 0 or total is None:
        return None
    return {"commit_records": int(commits.group(1)) if commits else 0, "fpi_bytes": int(total.group(3))}


def _lsn(position: int) -> str:
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def redacted(url: str) -> str:
    """`url` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def _local_postmaster(url: str) -> int | None:
    """The PID of the server that listens for `url` on this machine (the process holding its port), else None."""
    parts = urlsplit(url)
    if parts.hostname not in LOCAL_HOSTS:
        return None
    pids = procfs.listening_pids(parts.port or 5432)
    return min(pids) if pids else None
