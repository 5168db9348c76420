"""A store's secret key file: read it, or create it once, atomically, readable by its owner only (0600).

Processes racing to create it all end up with one key: each writes and fsyncs a private temporary file,
and `os.link` publishes it under the final name only if no key is there yet; every process then reads
whatever key won. The key is never logged; only a one-way fingerprint of it is stored elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from contextlib import suppress
from pathlib import Path

from uniquerand.permutation import KEY_BYTES
from uniquerand.storage.base import StoreKeyError, os_failure
from uniquerand.storage.durable import fsync_path


def read_key(path: Path, label: str) -> bytes | None:
    """The key, or None if there is no key file; raises StoreKeyError if the file is unusable."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise os_failure(StoreKeyError, f"The {label} store's key cannot be read", err) from err
    if len(key) != KEY_BYTES:
        raise StoreKeyError(f"The {label} store's key file does not hold {KEY_BYTES} bytes; it was left as is.")
    return key


def create_key(path: Path, label: str) -> bytes:
    """Publishes a new random key at `path` unless another process did first; returns the key that won."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(descriptor, "wb") as file:
            # os.open's mode is filtered by the umask; the key must be exactly 0600 whatever the umask.
            os.fchmod(file.fileno(), 0o600)
            file.write(secrets.token_bytes(KEY_BYTES))
            file.flush()
            os.fsync(file.fileno())
        # Losing the race is fine: the winner's key is read below.
        with suppress(FileExistsError):
            os.link(temporary, path)
        fsync_path(path.parent)
    finally:
        temporary.unlink(missing_ok=True)
    key = read_key(path, label)
    if key is None:
        raise StoreKeyError(f"The {label} store's key vanished while it was created.")
    return key


def fingerprint(key: bytes) -> bytes:
    """A one-way digest that tells keys apart without revealing them."""
    return hashlib.blake2b(key, digest_size=16, person=b"uniquerand-fp").digest()
