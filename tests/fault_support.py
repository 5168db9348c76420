"""Helpers for the fault suite: what each stage's files hold (read directly, not through the app), small
filesystems to fill up or make read-only, and process targets (module level, for spawn)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

import filelock

from tests.support import v3_codes
from tests.v4_support import rows as read_rows
from uniquerand.storage.keyfile import PERMUTATIONS

# Small spaces, so that a store that loses an update repeats a number at once; small shards and leases,
# so that refills and leases happen all through the load.
SPACE = {"INT_MIN": 1, "INT_MAX": 6000, "FLOAT_MIN": 0, "FLOAT_MAX": 6, "FLOAT_DECIMALS": 3}
SETTINGS = {
    **SPACE,
    "MAX_COUNT": 10,
    "V3_SETTLE_AT": 100,
    "V4_SHARD_SIZE": 400,
    "V4_REFILL_AT": 200,
    "V5_BLOCK_SIZE": 40,
}


def env_of(settings: dict) -> dict[str, str]:
    return {f"UNIQUERAND_{key}": str(value) for key, value in settings.items()}


def code_of(number: int | float, kind: str, decimals: int) -> int:
    return number if kind == "int" else round(number * 10**decimals)


def recorded_codes(instance: Path, stage: str, kind: str, settings: dict = SETTINGS) -> set[int]:
    """The codes a stage's files record as issued: the JSON list, the SQLite table, the claimed rows of the
    /v4 shards, or /v5's permutation of every counter below its high-water mark."""
    folder = instance / stage
    if stage in ("v1", "v2"):
        path = folder / "used_numbers.json"
        return set(json.loads(path.read_text())[kind]) if path.exists() else set()
    if stage == "v3":
        return v3_codes(folder / "numbers.db", kind)
    if stage == "v4":
        return {
            code
            for index in (0, 1)
            if (folder / f"{kind}_shard_{index}.db").exists()
            for (code,) in read_rows(folder / f"{kind}_shard_{index}.db", "SELECT code FROM pool WHERE used = 1")
        }
    rows = read_rows(folder / "counters.db", f"SELECT low, high, decimals, next FROM counters WHERE kind = '{kind}'")
    if not rows:
        return set()
    low, high, decimals, counter = rows[0]
    tweak = f"{kind}:{low}:{high}:{decimals}".encode()
    [(row,)] = read_rows(folder / "counters.db", "SELECT name FROM meta WHERE name LIKE 'key_fingerprint%'")
    permutation = PERMUTATIONS[row]((folder / "key").read_bytes(), high - low + 1, tweak)
    return {low + permutation(index) for index in range(counter)}


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A fresh tmpfs mounted at `path` (created), unmounted afterwards; raises OSError if mounting is refused."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        raise OSError(f"mount -t tmpfs refused: {result.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        remount(path, "rw", deadline=10)
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, mode: str, deadline: float = 10.0) -> None:
    """Remounts `path` ro or rw. Linux refuses a read-only remount while a file on it is open for writing
    (EBUSY: here, the JSON store's lock file while a request holds it), so this retries until a gap."""
    end = time.monotonic() + deadline
    while True:
        result = subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], capture_output=True)
        if result.returncode == 0:
            return
        if time.monotonic() > end:
            raise OSError(f"remount,{mode} of {path} failed: {result.stderr.decode(errors='replace').strip()}")
        time.sleep(0.005)


def fill_up(path: Path) -> Path:
    """Writes a ballast file until the filesystem at `path` is full; returns it (delete it to free the space)."""
    ballast = path / "ballast"
    descriptor = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        # Unbuffered writes, large then page-sized, so that not even a page is left when ENOSPC comes.
        for size in (1 << 20, 4096):
            with contextlib.suppress(OSError):
                while True:
                    os.write(descriptor, b"\0" * size)
    finally:
        os.close(descriptor)
    return ballast


def hold_lock(lock_paths: list[str], ready, release, seconds: float) -> None:
    """Process target: holds the JSON stores' file locks (as a stuck process would) until `release` is set
    or `seconds` have passed."""
    locks = [filelock.FileLock(path, thread_local=False) for path in lock_paths]
    for lock in locks:
        lock.acquire(timeout=10)
    ready.set()
    release.wait(seconds)
    for lock in locks:
        lock.release()
