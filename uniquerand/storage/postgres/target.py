"""The database as a `GroupCommitter` writes it (`storage.group_commit.Target`): each group's transaction on a
pooled connection of `Database`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from uniquerand.storage.contract import StoreError, StoreUnavailableError
from uniquerand.storage.postgres.database import commit, faults, rollback, store_error

if TYPE_CHECKING:
    from uniquerand.storage.postgres.database import Database


class PostgresTarget:
    """The database as a `GroupCommitter` writes it: each group's transaction on a pooled connection. The
    server orders concurrent writers itself (row locks, PRIMARY KEY checks), so there is no lock to take."""

    def __init__(self, name: str, database: Database, label: str, durable: bool = True) -> None:
        self.name = name
        self.label = label
        # False: COMMIT returns before the WAL is flushed (a write that a later durable commit makes durable with
        # it, such as a claim that matters only once its answer is recorded).
        self.durable = durable
        self.faults = faults()
        self._database = database

    def begin(self) -> Any:
        pool = self._database._pool.get()
        connection = self._lend()
        try:
            # One round trip either way (no parameters: the simple protocol takes every statement at once).
            begin = self._database.begin_statement
            connection.execute(begin if self.durable else f"{begin}; SET LOCAL synchronous_commit TO off")
        except Exception as err:
            pool.putconn(connection)
            raise self.translate(err) from err
        return connection

    def savepoint(self, connection: Any) -> None:
        connection.execute("SAVEPOINT job")

    def rollback_to_savepoint(self, connection: Any) -> None:
        connection.execute("ROLLBACK TO SAVEPOINT job")

    def release_savepoint(self, connection: Any) -> None:
        connection.execute("RELEASE SAVEPOINT job")

    def commit(self, connection: Any) -> None:
        try:
            commit(connection, self.label)
        except StoreError:
            rollback(connection)
            raise
        except Exception as err:
            # Committed or not, nobody can tell: the group's values are never handed out (burned).
            rollback(connection)
            raise self.translate(err) from err
        finally:
            self._database._pool.get().putconn(connection)

    def abort(self, connection: Any | None) -> None:
        if connection is not None:
            rollback(connection)
            self._database._pool.get().putconn(connection)

    def _lend(self) -> Any:
        try:
            return self._database._pool.get().getconn(timeout=self._database.connect_wait)
        except Exception as err:
            if isinstance(err, self.faults):
                raise self._database.lend_failed(err, self.label) from err
            raise self.translate(err) from err

    def translate(self, err: BaseException) -> StoreError:
        if isinstance(err, self.faults):
            return store_error(err, self.label)
        error = StoreUnavailableError(f"The {self.label} store cannot be used: an unexpected error occurred.")
        error.detail = f"{type(err).__name__}: {err}"
        return error


class DurablePostgresTarget(PostgresTarget):
    """A durable target whose group of one statement is that statement alone, on an autocommit connection: the
    server commits it durably (synchronous_commit=on) before it answers, so the group costs one round trip, not
    BEGIN, the statement and COMMIT. A statement that fails wrote nothing; one whose answer is lost raises, and
    its group's values are burned like those of a COMMIT whose answer was lost."""

    def begin_alone(self) -> Any:
        return self._lend()

    def end_alone(self, connection: Any) -> None:
        self._database._pool.get().putconn(connection)
