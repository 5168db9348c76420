"""JsonFileStore: every issued code in one JSON file, as the simple server of the design keeps them (/v1, /v2).

Concurrency: one `filelock` lock file serialises every process; within a process, the requests that arrive
together are served as one group (one read, one write) by the group committer (`group_commit`), on gevent's
event loop under the gevent worker: the file lock's wait polls with `time.sleep`, which gevent makes
cooperative. Every group re-reads the file under the lock, so another process's writes are always seen.
Durability: the file is rewritten atomically (temp file, fsync, os.replace, fsync of the folder) before a
code is returned, so a crash at any instant leaves the old file or the new one.
A file that cannot be parsed is never overwritten: the store fails closed. Cost: O(n) per group.
"""

from __future__ import annotations

import json
import os
from typing import Any

import filelock

from uniquerand.numbers import KINDS, NumberKind
from uniquerand.storage import runtime
from uniquerand.storage.contract import (
    Issued,
    Prefilling,
    Store,
    StoreBusyError,
    StoreCorruptError,
    StoreError,
    StoreSettings,
    StoreUnavailableError,
    os_failure,
)
from uniquerand.storage.durable import fsync_path
from uniquerand.storage.group_commit import GroupCommitter
from uniquerand.storage.picking import pick_unused

FILE_NAME = "used_numbers.json"
FORMAT = "uniquerand-json-v1"


class JsonDocument:
    """The file as one transaction sees it: per kind, its codes in file order and as a set. Codes are only
    ever appended, so a savepoint is where each list ended."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.used = {kind: set(data[kind]) for kind in KINDS}
        self.dirty = False
        self._marks: dict[str, int] = {}

    def claim(self, kind: NumberKind, code: int) -> bool:
        """Records `code` unless it is used; whether it was free."""
        used = self.used[kind]
        if code in used:
            return False
        used.add(code)
        self.data[kind].append(code)
        self.dirty = True
        return True

    def mark(self) -> None:
        self._marks = {kind: len(self.data[kind]) for kind in KINDS}

    def undo_to_mark(self) -> None:
        for kind, length in self._marks.items():
            added = self.data[kind][length:]
            del self.data[kind][length:]
            self.used[kind].difference_update(added)


class JsonFileTarget:
    """The JSON file as the group committer writes it (see `group_commit.Target`). Made per process."""

    faults = (OSError,)

    def __init__(self, store: JsonFileStore) -> None:
        self.name = FILE_NAME
        self._store = store
        try:
            store.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise os_failure(StoreUnavailableError, f"Cannot create the {store.label} folder", err) from err
        # Not thread-local: one writer per process takes it. A short poll keeps a waiting process from starving
        # while another serves back-to-back groups.
        self._lock = filelock.FileLock(str(store.path) + ".lock", thread_local=False, poll_interval=0.002)

    def begin(self) -> JsonDocument:
        label = self._store.label
        try:
            self._lock.acquire(timeout=self._store.lock_timeout)
        except filelock.Timeout:
            raise StoreBusyError(f"The {label} store is locked by another process; retry shortly.") from None
        except OSError as err:
            raise os_failure(StoreUnavailableError, f"Cannot lock the {label} store", err) from err
        try:
            return JsonDocument(self._store.read())
        except BaseException:
            self._lock.release()
            raise

    def savepoint(self, document: JsonDocument) -> None:
        document.mark()

    def rollback_to_savepoint(self, document: JsonDocument) -> None:
        document.undo_to_mark()

    def release_savepoint(self, document: JsonDocument) -> None:
        pass

    def commit(self, document: JsonDocument) -> None:
        try:
            if document.dirty:
                self._store.write(document.data)
        finally:
            self._lock.release()

    def abort(self, document: JsonDocument | None) -> None:
        self._lock.release()

    def translate(self, err: BaseException) -> StoreError:
        if isinstance(err, StoreError):
            return err
        if isinstance(err, OSError):
            return os_failure(StoreUnavailableError, f"Cannot write the {self._store.label} store", err)
        label = self._store.label
        error = StoreUnavailableError(f"The {label} store could not record the numbers; nothing was issued.")
        error.detail = f"{type(err).__name__}: {err}"
        return error


class JsonFileStore(Store, Prefilling):
    def __init__(self, settings: StoreSettings) -> None:
        super().__init__(settings)
        self.path = self.folder / FILE_NAME
        self._committer = runtime.PerProcess(self._new_committer)

    def issue(self, kind: NumberKind, count: int = 1) -> Issued:
        return Issued(self._committer.get().submit(lambda document: self._claim(document, kind, count)))

    def prefill(self, kind: NumberKind, count: int) -> None:
        self.issue(kind, count)

    def check_ready(self) -> None:
        # The file read under its lock, as a request reads it (this stage reads the whole file by design).
        self._committer.get().submit(lambda document: None, writes_once=True)

    def stats(self) -> dict[str, dict[str, int]]:
        # A job like any other: under the file lock, it sees every process's writes.
        data = self._committer.get().submit(lambda document: document.data, writes_once=True)
        result = {}
        for kind in KINDS:
            space = self.spaces[kind]
            issued = sum(1 for code in data[kind] if space.contains(code))
            result[kind] = {"issued": issued, "space_size": space.size, "remaining": space.size - issued}
        return result

    def _claim(self, document: JsonDocument, kind: NumberKind, count: int) -> list[int]:
        space, used = self.spaces[kind], document.used[kind]
        return pick_unused(
            space,
            count,
            self.max_attempts,
            lambda code: document.claim(kind, code),
            lambda: sum(1 for code in used if space.contains(code)),
            lambda: sorted(used),
        )

    def _new_committer(self) -> GroupCommitter:
        return GroupCommitter(
            [JsonFileTarget(self)], self.lock_timeout, lambda: StoreBusyError.of(self.label), offload=False
        )

    def read(self) -> dict[str, Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {"format": FORMAT, "float_decimals": self.spaces["float"].decimals, "int": [], "float": []}
        except OSError as err:
            raise os_failure(StoreUnavailableError, f"Cannot read the {self.label} store", err) from err
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise StoreCorruptError(
                f"The {self.label} store ({FILE_NAME}) is not valid JSON; it was left untouched for an operator."
            ) from None
        self._check_shape(data)
        return data

    def _check_shape(self, data: Any) -> None:
        corrupt = StoreCorruptError(
            f"The {self.label} store ({FILE_NAME}) does not have the expected layout; "
            "it was left untouched for an operator."
        )
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise corrupt
        for kind in KINDS:
            codes = data.get(kind)
            if not isinstance(codes, list) or not all(type(code) is int for code in codes):
                raise corrupt
        decimals = self.spaces["float"].decimals
        if data.get("float_decimals") != decimals:
            raise StoreCorruptError(
                f"The {self.label} store was written with FLOAT_DECIMALS={data.get('float_decimals')!r} but "
                f"the server runs with {decimals}; its floats cannot be reinterpreted safely."
            )

    def write(self, data: dict[str, Any]) -> None:
        payload = json.dumps(data, separators=(",", ":")).encode()
        temp = self.path.with_name(FILE_NAME + ".tmp")
        try:
            with open(temp, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
            fsync_path(self.folder)
        except OSError as err:
            raise os_failure(StoreUnavailableError, f"Cannot write the {self.label} store", err) from err
