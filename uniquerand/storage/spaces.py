"""Named spaces: /v5's number spaces made over the API, each with its own range, counter and permutation, kept
in the stage's store beside its own two counters (`NamedSpaces`), and the rules a definition must keep.

A space is never deleted and its name never takes another range: a counter indexes one range under one
permutation, so a second range under a used name could serve a number again. Each process keeps the stores of
the spaces it served lately (at most `cache_size`); one dropped from that cache closes its leases first (their
unserved rest becomes a gap, never served by anyone)."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from uniquerand.numbers import FLOAT_STEPS_LIMIT, KINDS, NumberSpace
from uniquerand.storage import runtime
from uniquerand.storage.contract import Issued, StoreCorruptError, StoreError
from uniquerand.storage.leased import LeasedCounterStore

NAME_PATTERN = "^[a-z0-9][a-z0-9_.-]{0,62}$"
_NAME = re.compile(NAME_PATTERN, re.ASCII)
# Codes are SQL BIGINTs: a space and every expression over it (high - low + 1) stays within a signed 64-bit word.
INT_LIMIT = 2**62
MAX_DECIMALS = 15
# The most spaces one page of the list holds.
PAGE_LIMIT = 1000


class SpaceNotFoundError(StoreError):
    """No space of that name was ever created."""


class SpaceConflictError(StoreError):
    """A space of that name exists with another definition; nothing was changed."""


class SpaceDefinitionError(ValueError):
    """A definition that no space may have; `field` names the part at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class SpaceRecord:
    """A named space as the store keeps it: its name, its range, when it was created (ISO 8601, UTC)."""

    name: str
    space: NumberSpace
    created: str

    @classmethod
    def from_row(cls, row: tuple, label: str) -> SpaceRecord:
        """The record of a catalog's row (name, kind, low, high, decimals, created)."""
        name, kind, low, high, decimals, created = row
        if kind not in KINDS:
            raise StoreCorruptError(f"The {label} store's space {name!r} has an unknown type.")
        return cls(name, NumberSpace(kind, low, high, decimals), created)

    @property
    def row(self) -> str:
        """Its counter's row: ':' is in no name, so it never meets the stage's own rows `int` and `float`."""
        return f"space:{self.name}"


def is_space_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def check_name(name: str) -> str:
    if not is_space_name(name):
        raise SpaceDefinitionError(
            "name",
            "Invalid space name: 1 to 63 characters of a-z, 0-9, '_', '.' and '-', starting with a letter or digit.",
        )
    return name


def space_from_definition(kind: object, low: object, high: object, decimals: object = None) -> NumberSpace:
    """The space of a definition: ints in [low, high], or floats in [low, high) on the grid of 10^-decimals."""
    if kind == "int":
        if decimals not in (None, 0):
            raise SpaceDefinitionError("decimals", "An int space has no 'decimals'.")
        low_code, high_code = _integer("min", low), _integer("max", high)
        for field, value in (("min", low_code), ("max", high_code)):
            if abs(value) > INT_LIMIT:
                raise SpaceDefinitionError(field, f"'{field}' must lie within -2^62 and 2^62.")
        if low_code > high_code:
            raise SpaceDefinitionError("max", "'max' must be at least 'min'.")
        space = NumberSpace("int", low_code, high_code)
    elif kind == "float":
        places = 6 if decimals is None else _integer("decimals", decimals)
        if not 0 <= places <= MAX_DECIMALS:
            raise SpaceDefinitionError("decimals", f"'decimals' must be an integer from 0 to {MAX_DECIMALS}.")
        low_steps, high_steps = _steps("min", low, places), _steps("max", high, places)
        if low_steps >= high_steps:
            raise SpaceDefinitionError("max", "'max' must be above 'min': a float space is [min, max).")
        space = NumberSpace("float", low_steps, high_steps - 1, places)
    else:
        raise SpaceDefinitionError("type", "Invalid 'type': it must be one of int, float.")
    if space.size > INT_LIMIT:
        raise SpaceDefinitionError("max", "A space holds at most 2^62 numbers.")
    return space


def _integer(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpaceDefinitionError(field, f"'{field}' must be an integer.")
    return value


def _steps(field: str, value: object, places: int) -> int:
    """`value` in grid steps; it must lie on the grid, where distinct steps are still distinct doubles."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value in (1e999, -1e999):
        raise SpaceDefinitionError(field, f"'{field}' must be a number.")
    steps = Decimal(str(value)).scaleb(places)
    if steps != steps.to_integral_value():
        raise SpaceDefinitionError(field, f"'{field}' must lie on the grid of 10^-{places} ('decimals').")
    if abs(steps) > FLOAT_STEPS_LIMIT:
        raise SpaceDefinitionError(field, f"'{field}' times 10^decimals must lie within -2^52 and 2^52.")
    return int(steps)


class SpaceCatalog(Protocol):
    """Where a stage's named spaces are defined: the backend's, with the counters of the same database."""

    def create(self, name: str, space: NumberSpace) -> tuple[SpaceRecord, bool]:
        """The space of `name`, created with its counter in one transaction unless it exists (then False);
        raises SpaceConflictError if it exists with another range."""

    def get(self, name: str) -> SpaceRecord | None: ...

    def page(self, after: str, limit: int) -> list[SpaceRecord]:
        """At most `limit` spaces whose names sort after `after`, in name order."""

    def levels(self, only: str | None = None) -> list[tuple[str, str, int, int]]:
        """(name, type, size, counter) of every space (or of the space `only`), in one read."""

    def counters(self, record: SpaceRecord) -> object:
        """The backend's `Counters` of the space's one counter."""


class NamedSpaces:
    """A stage's named spaces: defined in `catalog`, each served by a `LeasedCounterStore` of its own."""

    def __init__(self, catalog: SpaceCatalog, store_of: Callable[[SpaceRecord], LeasedCounterStore], cache_size: int):
        self.catalog = catalog
        self.store_of = store_of
        self.cache_size = cache_size
        self._process = runtime.PerProcess(_StoreCache)

    def create(self, name: str, space: NumberSpace) -> tuple[SpaceRecord, bool]:
        return self.catalog.create(check_name(name), space)

    def get(self, name: str) -> SpaceRecord:
        record = self.catalog.get(name) if is_space_name(name) else None
        if record is None:
            raise SpaceNotFoundError(f"There is no space named {name!r}.")
        return record

    def page(self, after: str, limit: int) -> list[SpaceRecord]:
        return self.catalog.page(after, min(limit, PAGE_LIMIT))

    def record(self, name: str) -> SpaceRecord:
        """The space's record as a draw from it sees it: from this process's cache, read once."""
        return self._served(name)[0]

    def issue(self, name: str, count: int = 1) -> tuple[NumberSpace, Issued]:
        record, store = self._served(name)
        return record.space, store.issue(record.space.kind, count)

    def stats(self, name: str) -> tuple[SpaceRecord, dict[str, int]]:
        """The space's record and its counts, as /metrics gives them: `issued` is every number taken from the
        space's counter (served, or leased to a worker that serves it and nobody else), the same on every host
        and worker; `remaining` the rest. Read from the catalog: describing a space builds no store of it
        here, so it evicts no space that this worker draws from (an eviction closes that space's leases)."""
        record = self.get(name)
        levels = self.catalog.levels(name)
        if not levels:
            raise StoreCorruptError(f"The {record.name!r} space's counter is missing.")
        _, _, size, counter = levels[0]
        return record, {"issued": counter, "remaining": size - counter, "space_size": size}

    def levels(self) -> list[tuple[str, str, int, int]]:
        return self.catalog.levels()

    def _served(self, name: str) -> tuple[SpaceRecord, LeasedCounterStore]:
        cache = self._process.get()
        with cache.lock:
            entry = cache.entries.get(name)
            if entry is not None:
                cache.entries.move_to_end(name)
                return entry
        # The catalog is read outside the lock: a slow read delays no other space's draws.
        record = self.get(name)
        entry = (record, self.store_of(record))
        with cache.lock:
            entry = cache.entries.setdefault(name, entry)
            evicted = cache.entries.popitem(last=False)[1] if len(cache.entries) > self.cache_size else None
        if evicted is not None:
            evicted[1].release()
        return entry


class _StoreCache:
    """This process's stores of the spaces it served lately, least recently used first."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: OrderedDict[str, tuple[SpaceRecord, LeasedCounterStore]] = OrderedDict()
