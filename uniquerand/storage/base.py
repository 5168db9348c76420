"""The contract every store keeps, and the errors a store may raise instead of issuing numbers.

A store hands out *codes* (see `uniquerand.numbers`) and promises that a code it returned was durably
recorded first, and that it never returns the same code of the same kind twice.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from uniquerand.numbers import NumberKind, NumberSpace

T = TypeVar("T")


class StoreError(Exception):
    """A store could not do what was asked; nothing was issued."""

    # The underlying fault (an sqlite3 or OS error), for the log only: clients get the message.
    detail: str | None = None


E = TypeVar("E", bound=StoreError)


def os_failure(error_class: type[E], message: str, err: OSError) -> E:
    """`error_class` saying `message` and the system's reason, or a generic one for an OSError without an
    errno (its text may name paths, so it goes to the log only, in `detail`, as every OSError's does)."""
    error = error_class(f"{message}: {err.strerror or 'an unexpected I/O error'}.")
    error.detail = f"{type(err).__name__}: {err}"
    return error


class StoreBusyError(StoreError):
    """The store's lock was held past the timeout; retrying later may succeed."""


class StoreUnavailableError(StoreError):
    """The store's files could not be written or opened (read-only folder, full disk, I/O error)."""


class StoreCorruptError(StoreError):
    """The store's file cannot be read as what it should be; it was left untouched."""


class StoreKeyError(StoreError):
    """A store's secret key is missing, unreadable or not the one its records were made with; serving
    with another key could re-issue numbers, so the store refuses and creates nothing."""


class RetriesExhaustedError(StoreError):
    """No free number was found within the allowed attempts."""


class SpaceExhaustedError(StoreError):
    """Every number of the space has been issued."""


class ShardsEmptyError(StoreError):
    """Every pool of the kind is empty while numbers remain; a refill is under way, retrying may succeed."""


class InsufficientRemainingError(StoreError):
    """Fewer numbers remain than a batch asked for; nothing was issued."""

    def __init__(self, requested: int, remaining: int) -> None:
        super().__init__(f"Asked for {requested} numbers but only {remaining} remain in the space.")
        self.requested = requested
        self.remaining = remaining


class Store(Protocol):
    """A place that issues unique codes of each kind."""

    # The space of each kind, the app's own (the blueprints write a code as its space says).
    spaces: dict[NumberKind, NumberSpace]

    def issue(self, kind: NumberKind, count: int = 1) -> list[int]:
        """`count` distinct codes never issued before, durably recorded before returning."""
        ...

    def prefill(self, kind: NumberKind, count: int) -> None:
        """Records `count` more codes as issued through a bulk path, as if served and discarded.

        For benchmarks: it shows a store's cost at scale without millions of requests.
        """
        ...

    def stats(self) -> dict[str, dict[str, int]]:
        """Per kind: `issued`, `space_size`, `remaining` (and any store-specific counters)."""
        ...


class PerProcess(Generic[T]):
    """State built once per process, thread-safely: locks, connections and threads never cross a fork.

    `get()` builds the value on first use in each process (gunicorn forks workers after import), and
    two threads racing at a worker's first requests still build it once.
    """

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._value: T | None = None

    def get(self) -> T:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._value = self._build()
                    self._pid = os.getpid()
        return self._value
