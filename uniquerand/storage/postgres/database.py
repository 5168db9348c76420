"""A PostgreSQL database as every PostgreSQL store uses it: one connection pool per process, each connection
durable (`synchronous_commit=on` whatever the server's or role's default), the one-time schema setup of a
store (its tables: `schema`), transactions (a group committer's: `target`), and the driver's errors as typed
store errors.

psycopg picks how it waits for the server when it is imported: imported before gevent patched the process, it
would wait in C and stop every request of a gevent worker while one query runs. So it is imported here only
inside functions that run in the process that serves (the pool is built on first use, see `runtime.PerProcess`),
never at import time: the gunicorn master imports the app's modules before any worker patches anything.
"""

from __future__ import annotations

import logging
import select
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from uniquerand.logs import event
from uniquerand.storage import runtime
from uniquerand.storage.contract import StoreBusyError, StoreCorruptError, StoreError, StoreUnavailableError
from uniquerand.storage.postgres.schema import META, Table, check_recorded, space_settings

if TYPE_CHECKING:
    from uniquerand.storage.postgres.target import PostgresTarget

# Taken by every schema setup, so that hosts starting at once create each table once (concurrent
# CREATE TABLE IF NOT EXISTS can fail on the catalog's unique index). The value is arbitrary: b"uniq".
SCHEMA_LOCK = 0x756E6971
log = logging.getLogger(__name__)
# SQLSTATE classes: a lock or statement timeout, a serialization conflict: a retry may succeed.
BUSY_STATES = ("55P03", "57014", "40001", "40P01")
# A table of ours that has other columns or types than this release made: not ours to change.
FOREIGN_STATES = ("42703", "42804", "42P01", "42883", "22003")


class Database:
    """The PostgreSQL database at `url`, shared by the PostgreSQL stores of an app; a pool per process."""

    def __init__(
        self, url: str, *, pool_size: int, timeout: float, async_replication: str = "refuse", pooler: str = "none"
    ) -> None:
        self.url = url
        self.pool_size = pool_size
        self.timeout = timeout
        # What an asynchronous standby makes of a store: "refuse" it (a failover could serve numbers again), or
        # "warn" and serve (`check_replication`).
        self.async_replication = async_replication
        # "pgbouncer": the server connection may change from one transaction to the next, so the app keeps no
        # session state (`begin_statement`, `_open_pool`).
        self.pooler = pooler
        # A request waits `timeout` in all: for a connection a quarter of it, for a lock half, so that a database
        # that cannot be reached is told as such, not as a busy store.
        self.connect_wait = timeout / 4
        # A statement waiting for a lock gives up before its request does: a request that gave up on a job
        # still running would burn what the job then commits.
        self.lock_wait_ms = int(timeout * 1000 / 2)
        self.settings = {
            "synchronous_commit": "on",
            "lock_timeout": self.lock_wait_ms,
            "idle_in_transaction_session_timeout": max(self.lock_wait_ms * 4, 60_000),
        }
        # What opens a transaction. Behind PgBouncer, the settings go with each transaction (SET LOCAL, in the
        # same round trip: no parameters, so the simple protocol takes every statement at once).
        self.begin_statement = "BEGIN"
        if pooler == "pgbouncer":
            self.begin_statement += "".join(f"; SET LOCAL {name} TO {value}" for name, value in self.settings.items())
        self._refused = _Refusal()
        self._pool = runtime.PerProcess(self._open_pool)
        self._set_up = runtime.PerProcess(_SetUp)
        self._health = runtime.PerProcess(_Health)

    @contextmanager
    def connection(self, label: str) -> Iterator[Any]:
        """A connection of this process's pool (autocommit: transactions are explicit), errors translated."""
        with translated_errors(label, self._refused), self._pool.get().connection(timeout=self.connect_wait) as c:
            yield c

    @contextmanager
    def transaction(self, label: str) -> Iterator[Any]:
        """BEGIN ... COMMIT on a pooled connection; ROLLBACK if the block raises. A COMMIT whose answer is lost
        raises (store_unavailable): whatever it wrote is never served by this process."""
        with self.connection(label) as connection:
            connection.execute(self.begin_statement)
            try:
                yield connection
            except BaseException:
                rollback(connection)
                raise
            commit(connection, label)

    def set_up(
        self,
        label: str,
        tables: list[Table],
        spaces: dict[str, Any],
        then: Callable[[Any], None] | None = None,
    ) -> None:
        """Before a store's first statement in this process: checks that the server is durable, creates or
        checks the stage's `tables`, records or checks its spaces, then runs `then(connection)`; all in one
        transaction that holds SCHEMA_LOCK, so that hosts starting at once do it one at a time. A failure
        changes nothing (the transaction rolls back) and the next use tries again."""
        state = self._set_up.get()
        if label in state.done:
            return
        with state.lock:
            if label in state.done:
                return
            with self.transaction(label) as connection:
                self._check_settings(connection, label)
                check_replication(connection, label, self.async_replication)
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                for table in (META, *tables):
                    table.create(connection)
                check_recorded(connection, label, space_settings(spaces), label)
                if then is not None:
                    then(connection)
            state.done.add(label)

    def target(self, name: str, label: str, durable: bool = True) -> PostgresTarget:
        # It builds on this module's functions.
        from uniquerand.storage.postgres.target import DurablePostgresTarget, PostgresTarget

        return DurablePostgresTarget(name, self, label) if durable else PostgresTarget(name, self, label, durable)

    def check(self, label: str) -> None:
        """Raises unless a connection answers now, to a primary whose replication keeps commits (readiness:
        `check_replication`). The answer is kept for a second: the stages of a database ask together, and one
        that cannot be reached would make each of them wait."""
        health = self._health.get()
        with health.lock:
            if time.monotonic() - health.at >= 1.0:
                try:
                    with self.connection(label) as connection:
                        self._check_settings(connection, label)
                        check_replication(connection, label, self.async_replication, warn=False)
                    health.error = None
                except StoreError as err:
                    health.error = err
                health.at = time.monotonic()
            if health.error is not None:
                raise type(health.error)(str(health.error))

    def close(self) -> None:
        """Closes this process's connections (their pool), if it opened any: its use of the database ends."""
        pool = self._pool.built()
        if pool is not None:
            pool.close()

    @property
    def closed(self) -> bool:
        pool = self._pool.built()
        return pool is not None and pool.closed

    def lend_failed(self, err: BaseException, label: str) -> StoreError:
        """The store error for a connection the pool could not lend (`store_error`, told why when a pooler
        refused the connection's settings)."""
        return store_error(err, label, self._refused)

    def _open_pool(self) -> Any:
        from psycopg import Connection
        from psycopg_pool import ConnectionPool

        freshness = _Freshness(ConnectionPool.check_connection)
        refused = self._refused

        class _Watched(Connection):
            """Keeps why the last connection attempt failed: the pool retries in the background, and a request
            that times out waiting for it would otherwise not know."""

            @classmethod
            def connect(cls, *args: Any, **kwargs: Any) -> Any:
                try:
                    connection = super().connect(*args, **kwargs)
                except Exception as err:
                    refused.note(err)
                    raise
                refused.note(None)
                return connection

        if self.pooler == "pgbouncer":
            # No startup options (PgBouncer refuses them: `begin_statement` sets them per transaction), and no
            # server-side prepared statements (another client's transaction may get the server connection).
            kwargs: dict[str, Any] = {"prepare_threshold": None}
        else:
            # Client options override the server's, database's and role's defaults. The URL's own options (a
            # search_path, say) are kept: a keyword would replace them.
            from psycopg.conninfo import conninfo_to_dict

            ours = [f"-c {name}={value}" for name, value in self.settings.items()]
            kwargs = {"options": " ".join([conninfo_to_dict(self.url).get("options") or "", *ours]).strip()}
        pool = ConnectionPool(
            self.url,
            connection_class=_Watched,
            min_size=1,
            max_size=self.pool_size,
            open=False,
            timeout=self.connect_wait,
            # A connection broken by a server restart or a failover is found out (and replaced) before it is
            # lent out, if it sat idle; one in use just now costs no round trip (`_Freshness`).
            check=freshness.check,
            reset=freshness.returned,
            # Connecting gives up in time; a retry after the server is back opens a new connection.
            reconnect_timeout=max(self.timeout, 1.0),
            kwargs={"autocommit": True, "connect_timeout": max(1, int(self.timeout)), **kwargs},
            name="uniquerand",
        )
        pool.open(wait=False)
        return pool

    def _check_settings(self, connection: Any, label: str) -> None:
        """Refuses a server that could lose a commit it acknowledged (fsync off), a connection that would not
        wait for the WAL (synchronous_commit), and connection options that did not arrive: a pooler such as
        PgBouncer (with ignore_startup_parameters) dropped them, and only DATABASE_POOLER=pgbouncer works there."""
        fsync, synchronous, lock_timeout = connection.execute(
            "SELECT current_setting('fsync'), current_setting('synchronous_commit'), "
            "(SELECT setting FROM pg_settings WHERE name = 'lock_timeout')"
        ).fetchone()
        if fsync != "on":
            raise StoreUnavailableError(
                f"The {label} store's database runs with fsync=off: a crash could lose numbers it confirmed and "
                "serve them again. Refusing to serve from it; turn fsync on."
            )
        if synchronous != "on" and synchronous != "remote_apply":
            hint = (
                " Behind PgBouncer a single statement runs with the role's setting: ALTER ROLE ... SET "
                "synchronous_commit = on."
                if self.pooler == "pgbouncer"
                else ""
            )
            raise StoreUnavailableError(
                f"The {label} store's connections run with synchronous_commit={synchronous}; refusing to serve.{hint}"
            )
        if self.pooler != "pgbouncer" and lock_timeout != str(self.lock_wait_ms):
            raise StoreUnavailableError(
                f"The {label} store's connections lack the settings given when they open (lock_timeout is "
                f"{lock_timeout} ms, not {self.lock_wait_ms}): a pooler such as PgBouncer dropped them. Set "
                "UNIQUERAND_DATABASE_POOLER=pgbouncer."
            )


class _Refusal:
    """Why the pool's last attempt to connect failed, if it did (`Database.lend_failed`)."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def note(self, err: BaseException | None) -> None:
        self.reason = None if err is None else str(err)


class _Freshness:
    """The pool's check of a connection before lending it: a round trip to the server only if the connection sat
    idle for CHECK_AFTER_IDLE seconds, or if its socket has something to read (an idle connection's server has
    nothing to say unless it closed it: a restart, a failover). Checking every loan would cost a round trip per
    transaction; the socket test is one system call."""

    CHECK_AFTER_IDLE = 1.0

    def __init__(self, round_trip: Callable[[Any], None]) -> None:
        self._round_trip = round_trip
        self._returned: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    def returned(self, connection: Any) -> None:
        self._returned[connection] = time.monotonic()

    def check(self, connection: Any) -> None:
        idle = time.monotonic() - self._returned.get(connection, -1e9)
        if connection.broken or idle >= self.CHECK_AFTER_IDLE or _readable(connection):
            self._round_trip(connection)


def _readable(connection: Any) -> bool:
    try:
        return bool(select.select([connection.fileno()], [], [], 0)[0])
    except (OSError, ValueError):  # closed: the round trip tells how
        return True


class _Health:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at = -1.0
        self.error: StoreError | None = None


class _SetUp:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done: set[str] = set()


def replication(connection: Any) -> str:
    """How the database the connection writes to keeps a commit once it answered: "synchronous" (a COMMIT waits
    for the standbys that `synchronous_standby_names` names), "single" (no standby streams from it), or
    "asynchronous" (standbys stream from it, and a COMMIT waits for none of them: one promoted after a crash may
    lack commits whose numbers were served), or "standby" (the server is itself a standby: read-only)."""
    names, streaming, standby = connection.execute(
        "SELECT current_setting('synchronous_standby_names'), (SELECT count(*) FROM pg_stat_replication), "
        "pg_is_in_recovery()"
    ).fetchone()
    if standby:
        return "standby"
    if names.strip():
        return "synchronous"
    return "asynchronous" if streaming else "single"


def check_replication(connection: Any, label: str, async_replication: str, warn: bool = True) -> None:
    """Checks the database's `replication`: raises (store_unavailable) for a standby, and for asynchronous standbys
    unless `async_replication` is "warn", which serves (and logs a warning, with `warn`: at set-up, not at
    every readiness check)."""
    found = replication(connection)
    if found == "standby":
        raise StoreUnavailableError(
            f"The {label} store's database is a read-only standby; give DATABASE_URL the primary, or every host "
            "with target_session_attrs=read-write."
        )
    if found == "asynchronous":
        message = (
            f"The {label} store's database has asynchronous standbys: a failover to one could serve numbers "
            "again. Make replication synchronous (synchronous_standby_names, or Patroni's synchronous_mode)"
        )
        if async_replication != "warn":
            raise StoreUnavailableError(f"{message}, or set UNIQUERAND_ASYNC_REPLICATION=warn to accept that.")
        if warn:
            event(log, "replication_asynchronous", logging.WARNING, stage=label)


def commit(connection: Any, label: str) -> None:
    """COMMIT, and a store error unless the server says it committed. A transaction in which a statement
    failed (a job of a group that had no savepoint, say) is rolled back by its COMMIT without an error: the
    jobs that ran before the failure must not hand out what they wrote."""
    status = connection.execute("COMMIT").statusmessage
    if status != "COMMIT":
        error = StoreUnavailableError(f"The {label} store's write was rolled back by the database; retry shortly.")
        error.detail = f"COMMIT answered {status}"
        raise error


def rollback(connection: Any) -> None:
    """Ends a connection's transaction after a failure; a connection that cannot is closed (the pool drops it)."""
    from psycopg import Error

    try:
        if not connection.closed:
            connection.execute("ROLLBACK")
    except Error:
        connection.close()


def faults() -> tuple[type[BaseException], ...]:
    """The driver's exceptions, which `store_error` translates."""
    from psycopg import Error
    from psycopg_pool import PoolTimeout

    return (Error, PoolTimeout)


def store_error(err: BaseException, label: str, refused: _Refusal | None = None) -> StoreError:
    """The typed store error for a driver exception; the driver's text (which may name hosts) goes to `detail`.
    `refused`: why the pool last failed to connect, for a connection it could not lend."""
    from psycopg import OperationalError
    from psycopg_pool import PoolTimeout

    if isinstance(err, StoreError):
        return err
    state = getattr(err, "sqlstate", None) or ""
    reason = refused.reason if refused is not None else None
    if isinstance(err, PoolTimeout) and reason is not None and "unsupported startup parameter" in reason:
        error: StoreError = StoreUnavailableError(
            f"The {label} store's database refuses the settings a connection gives when it opens: a pooler such "
            "as PgBouncer is in the way. Set UNIQUERAND_DATABASE_POOLER=pgbouncer."
        )
        error.detail = f"{type(err).__name__}: {err}; the last connection attempt: {reason}"
        return error
    if isinstance(err, PoolTimeout):
        error = StoreUnavailableError(
            f"The {label} store's database cannot be reached, or all its connections are in use; retry shortly."
        )
    elif state.startswith(BUSY_STATES):
        error = StoreBusyError.of(label)
    elif state.startswith(FOREIGN_STATES):
        error = StoreCorruptError(
            f"The {label} store's tables in the database are not the ones this release made; they were left as is."
        )
    elif state == "42501":
        error = StoreUnavailableError(f"The {label} store's database user lacks a privilege it needs.")
    elif isinstance(err, OperationalError):
        error = StoreUnavailableError(
            f"The {label} store lost its database connection; nothing was served from the unfinished write. "
            "Retry shortly."
        )
    else:
        error = StoreUnavailableError(f"The {label} store cannot be used: a database error occurred.")
    error.detail = f"{type(err).__name__}: {err}"
    return error


@contextmanager
def translated_errors(label: str, refused: _Refusal | None = None) -> Iterator[None]:
    try:
        yield
    except StoreError:
        raise
    except Exception as err:
        if isinstance(err, faults()):
            raise store_error(err, label, refused) from err
        raise
