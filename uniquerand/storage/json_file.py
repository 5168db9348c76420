"""JsonFileStore: every issued code in one JSON file, as the simple server of the design keeps them.

Concurrency: one `filelock` lock file serialises every process. Within a process, the requests that
arrive together are served as one batch (one read, one write) by whichever thread holds the thread
lock. Every batch re-reads the file under the lock, so another process's writes are always seen.
Durability: the file is rewritten atomically (temp file, fsync, os.replace, fsync of the folder)
before a code is returned, so a crash at any instant leaves the old file or the new one.
A file that cannot be parsed is never overwritten: the store fails closed. Cost: O(n) per batch.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock

from uniquerand.numbers import KINDS, NumberKind, NumberSpace
from uniquerand.storage.base import (
    PerProcess,
    StoreBusyError,
    StoreCorruptError,
    StoreError,
    StoreUnavailableError,
    os_failure,
)
from uniquerand.storage.durable import fsync_path
from uniquerand.storage.picking import pick_unused

FILE_NAME = "used_numbers.json"
FORMAT = "uniquerand-json-v1"


@dataclass
class _ProcessState:
    file_lock: filelock.FileLock
    thread_lock: threading.Lock = field(default_factory=threading.Lock)
    queue_lock: threading.Lock = field(default_factory=threading.Lock)
    queue: list[_Request] = field(default_factory=list)


@dataclass(eq=False)
class _Request:
    kind: NumberKind
    count: int
    codes: list[int] | None = None
    error: StoreError | None = None
    done: bool = False
    abandoned: bool = False


class JsonFileStore:
    def __init__(
        self,
        folder: str | os.PathLike[str],
        spaces: dict[NumberKind, NumberSpace],
        *,
        label: str,
        max_attempts: int,
        lock_timeout: float,
    ) -> None:
        self.folder = Path(folder)
        self.path = self.folder / FILE_NAME
        self.spaces = spaces
        self.label = label
        self.max_attempts = max_attempts
        self.lock_timeout = lock_timeout
        self._process = PerProcess(self._process_state)

    def issue(self, kind: NumberKind, count: int = 1) -> list[int]:
        state = self._process.get()
        request = _Request(kind, count)
        with state.queue_lock:
            state.queue.append(request)
        # Whoever holds the thread lock serves every queued request with one read and one write.
        if not state.thread_lock.acquire(timeout=self.lock_timeout):
            request.abandoned = True
            raise StoreBusyError(f"The {self.label} store is busy; retry shortly.")
        try:
            if not request.done:
                with state.queue_lock:
                    batch, state.queue = [queued for queued in state.queue if not queued.abandoned], []
                # On gevent's event loop too: the file lock's wait polls with `time.sleep`, which gevent makes
                # cooperative. (On a real thread, a first write once failed with an OSError without errno.)
                self._serve(state.file_lock, batch)
        finally:
            state.thread_lock.release()
        if request.error is not None:
            raise request.error
        return request.codes

    def _serve(self, file_lock: filelock.FileLock, batch: list[_Request]) -> None:
        claimed: dict[int, list[int]] = {}
        try:
            with self._file_locked(file_lock):
                data = self._read()
                used = {kind: set(data[kind]) for kind in KINDS}
                for request in batch:
                    try:
                        claimed[id(request)] = self._claim(data[request.kind], used[request.kind], request)
                    except StoreError as err:
                        request.error = err
                if claimed:
                    self._write(data)
            # Only now, with the file written, may any request of the batch see its codes.
            for request in batch:
                request.codes = claimed.get(id(request))
        except BaseException as err:
            # Whatever failed (a store error, or anything unexpected in the thread that serves the batch),
            # nothing was written: no request of the batch may return codes.
            failure = (
                err
                if isinstance(err, StoreError)
                else StoreUnavailableError(f"The {self.label} store could not record the numbers; nothing was issued.")
            )
            for request in batch:
                request.codes, request.error = None, request.error or failure
            if not isinstance(err, StoreError):
                raise
        finally:
            for request in batch:
                request.done = True

    def _claim(self, used_list: list[int], used: set[int], request: _Request) -> list[int]:
        space = self.spaces[request.kind]
        claimed: list[int] = []

        def claim(code: int) -> bool:
            if code in used:
                return False
            used.add(code)
            claimed.append(code)
            return True

        try:
            codes = pick_unused(
                space,
                request.count,
                self.max_attempts,
                claim,
                lambda: sum(1 for code in used if space.contains(code)),
                lambda: sorted(used),
            )
        except StoreError:
            used.difference_update(claimed)
            raise
        used_list.extend(claimed)
        return codes

    def prefill(self, kind: NumberKind, count: int) -> None:
        self.issue(kind, count)

    def stats(self) -> dict[str, dict[str, int]]:
        # Through the thread lock too: the file lock object is shared by the process's threads and
        # reentrant, so it only excludes other processes.
        state = self._process.get()
        if not state.thread_lock.acquire(timeout=self.lock_timeout):
            raise StoreBusyError(f"The {self.label} store is busy; retry shortly.")
        try:
            with self._file_locked(state.file_lock):
                data = self._read()
        finally:
            state.thread_lock.release()
        result = {}
        for kind in KINDS:
            space = self.spaces[kind]
            issued = sum(1 for code in data[kind] if space.contains(code))
            result[kind] = {"issued": issued, "space_size": space.size, "remaining": space.size - issued}
        return result

    @contextmanager
    def _file_locked(self, file_lock: filelock.FileLock) -> Iterator[None]:
        try:
            file_lock.acquire(timeout=self.lock_timeout)
        except filelock.Timeout:
            raise StoreBusyError(f"The {self.label} store is locked by another process; retry shortly.") from None
        except OSError as err:
            raise os_failure(StoreUnavailableError, f"Cannot lock the {self.label} store", err) from err
        try:
            yield
        finally:
            file_lock.release()

    def _process_state(self) -> _ProcessState:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise os_failure(StoreUnavailableError, f"Cannot create the {self.label} folder", err) from err
        # Not thread-local: threads take turns through the thread lock; the file lock is held per process.
        # A short poll keeps a waiting process from starving while another serves back-to-back batches.
        file_lock = filelock.FileLock(str(self.path) + ".lock", thread_local=False, poll_interval=0.002)
        return _ProcessState(file_lock)

    def _read(self) -> dict[str, Any]:
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

    def _write(self, data: dict[str, Any]) -> None:
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
