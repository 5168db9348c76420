"""The contract every store keeps (`Store`), what it returns (`Issued`), and the errors it may raise instead.

A store hands out *codes* (see `uniquerand.numbers`) and promises that a code it returned was durably
recorded first, and that it never returns the same code of the same kind twice. Adding a backend means
writing a `Store` and adding it to the contract suite (tests/test_store_contract.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

from uniquerand.numbers import NumberKind, NumberSpace


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

    @classmethod
    def of(cls, label: str) -> StoreBusyError:
        return cls(f"The {label} store is busy; retry shortly.")


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


class HeldElsewhereError(StoreError):
    """What is left of the space (or, for a batch, enough for it) is held by other live workers, leased and not
    served yet: they serve it, and a retry that reaches one of them may succeed. Never said once no live
    worker may serve what was asked."""


class ShardsEmptyError(StoreError):
    """Every pool of the kind is empty while numbers remain; a refill is under way, retrying may succeed."""


class InsufficientRemainingError(StoreError):
    """Fewer numbers remain than a batch asked for; nothing was issued."""

    def __init__(self, requested: int, remaining: int) -> None:
        super().__init__(f"Asked for {requested} numbers but only {remaining} remain in the space.")
        self.requested = requested
        self.remaining = remaining


class Issued(NamedTuple):
    """The codes of one `issue` call, in the order they are to be served, and what a stage tells about
    each (/v4: the shard that served it), in the same order. (A tuple: made on every request.)"""

    codes: list[int]
    sources: list[str] | None = None


@dataclass(frozen=True)
class StoreSettings:
    """What every store is built with: the folder of its files, the space of each kind (the app's own: the
    blueprints write a code as its space says), its name in messages, how long a request waits for its locks,
    and the random draws per number before the exact pick (for the stores that draw)."""

    folder: Path
    spaces: dict[NumberKind, NumberSpace]
    label: str
    lock_timeout: float
    max_attempts: int = 100


class Store(ABC):
    """A place that issues unique codes of each kind: what the HTTP side and the CLI may call."""

    def __init__(self, settings: StoreSettings) -> None:
        self.folder = settings.folder
        self.spaces = settings.spaces
        self.label = settings.label
        self.lock_timeout = settings.lock_timeout
        self.max_attempts = settings.max_attempts

    @abstractmethod
    def issue(self, kind: NumberKind, count: int = 1) -> Issued:
        """`count` distinct codes never issued before, durably recorded before returning; all or none."""

    @abstractmethod
    def stats(self) -> dict[str, dict]:
        """Per kind: `issued`, `space_size`, `remaining` (and any store-specific counters)."""

    @abstractmethod
    def check_ready(self) -> None:
        """Raises the StoreError a request would get if the store could not serve now: its files or database
        out of reach, damaged or locked, its key missing. Cheap enough to be asked every second (/readyz). A
        space used up, or /v4's pools awaiting a refill, is no fault of the store: it still answers."""

    def prepare(self) -> None:  # noqa: B027  (optional: most stores have nothing to build ahead)
        """Builds at a worker's start, before it serves, what its first requests would otherwise wait for."""


class Prefilling(ABC):
    """A store's bulk path for benchmarks: it shows a store's cost at scale without millions of requests."""

    @abstractmethod
    def prefill(self, kind: NumberKind, count: int) -> None:
        """Records `count` more codes as issued, as if served and discarded."""
