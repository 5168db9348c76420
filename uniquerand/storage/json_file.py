"""JsonFileStore: every issued code in one JSON file, as the simple server of the design keeps them.

Concurrency: one `filelock` lock file serialises every thread of every process (a thread lock in
front of it keeps threads of one process from polling the file lock). Each request re-reads the
file under the lock, so another process's writes are always seen.
Durability: the file is rewritten atomically (temp file, fsync, os.replace, fsync of the folder)
before a code is returned, so a crash at any instant leaves the old file or the new one.
A file that cannot be parsed is never overwritten: the store fails closed. Cost: O(n) per request.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import filelock

from uniquerand.numbers import KINDS, NumberKind, NumberSpace
from uniquerand.storage.base import (
    StoreBusyError,
    StoreCorruptError,
    StoreUnavailableError,
)
from uniquerand.storage.picking import pick_unused

FILE_NAME = "used_numbers.json"
FORMAT = "uniquerand-json-v1"


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
        self._pid: int | None = None
        self._thread_lock = threading.Lock()
        self._file_lock: filelock.FileLock | None = None

    def issue(self, kind: NumberKind, count: int = 1) -> list[int]:
        space = self.spaces[kind]
        with self._locked():
            data = self._read()
            used_list: list[int] = data[kind]
            used = set(used_list)

            def claim(code: int) -> bool:
                if code in used:
                    return False
                used.add(code)
                used_list.append(code)
                return True

            codes = pick_unused(
                space,
                count,
                self.max_attempts,
                claim,
                lambda: sum(1 for code in used if space.contains(code)),
                lambda: sorted(used),
            )
            self._write(data)
        return codes

    def prefill(self, kind: NumberKind, count: int) -> None:
        self.issue(kind, count)

    def stats(self) -> dict[str, dict[str, int]]:
        with self._locked():
            data = self._read()
        result = {}
        for kind in KINDS:
            space = self.spaces[kind]
            issued = sum(1 for code in data[kind] if space.contains(code))
            result[kind] = {"issued": issued, "space_size": space.size, "remaining": space.size - issued}
        return result

    @contextmanager
    def _locked(self):
        self._ensure_process_state()
        deadline = time.monotonic() + self.lock_timeout
        if not self._thread_lock.acquire(timeout=self.lock_timeout):
            raise StoreBusyError(f"The {self.label} store is busy; retry shortly.")
        try:
            try:
                self._file_lock.acquire(timeout=max(0.0, deadline - time.monotonic()))
            except filelock.Timeout:
                raise StoreBusyError(f"The {self.label} store is locked by another process; retry shortly.") from None
            except OSError as err:
                raise StoreUnavailableError(f"Cannot lock the {self.label} store: {err.strerror}.") from err
            try:
                yield
            finally:
                self._file_lock.release()
        finally:
            self._thread_lock.release()

    def _ensure_process_state(self) -> None:
        # A lock inherited across fork may be held by a thread that does not exist in this process.
        if self._pid != os.getpid():
            self._thread_lock = threading.Lock()
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreUnavailableError(f"Cannot create the {self.label} folder: {err.strerror}.") from err
            self._file_lock = filelock.FileLock(str(self.path) + ".lock", thread_local=False)
            self._pid = os.getpid()

    def _read(self) -> dict[str, Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {"format": FORMAT, "float_decimals": self.spaces["float"].decimals, "int": [], "float": []}
        except OSError as err:
            raise StoreUnavailableError(f"Cannot read the {self.label} store: {err.strerror}.") from err
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
            folder = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError as err:
            raise StoreUnavailableError(f"Cannot write the {self.label} store: {err.strerror}.") from err
