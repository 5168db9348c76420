"""/v5's secret key: its file, read or created once, atomically, readable by its owner only (0600); its
fingerprint; and which permutation a database's counters are served with.

Processes racing to create it all end up with one key: each writes and fsyncs a private temporary file,
and `os.link` publishes it under the final name only if no key is there yet; every process then reads
whatever key won. The key is never logged; only a one-way fingerprint of it is stored, in the counter
database, under a name that says the permutation (see PERMUTATIONS).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from uniquerand.aes_permutation import AesRadixPermutation
from uniquerand.permutation import KEY_BYTES, BinaryFeistelPermutation, Permutation, RadixFeistelPermutation
from uniquerand.storage.contract import StoreCorruptError, StoreKeyError, os_failure
from uniquerand.storage.durable import fsync_path

# The permutation a database's counters are served with is named by the meta row that holds the key's
# fingerprint. Earlier releases wrote 'key_fingerprint' (the binary network) and then
# 'key_fingerprint:radix-feistel-10' (the radix network over BLAKE2b): such a database goes on with its own,
# whatever it leased, since another permutation of its next counters could give numbers it already served.
# A new database gets the AES network's row, which an earlier release does not know and refuses to serve:
# two releases never serve one database with two permutations.
# (key, size, tweak, *, tables=None): tables True/False forces round tables on or off, None lets the size decide.
PermutationType = Callable[..., Permutation]
FINGERPRINT_PREFIX = "key_fingerprint"
NEW_FINGERPRINT = "key_fingerprint:aes-radix-feistel-10"
PERMUTATIONS: dict[str, PermutationType] = {
    "key_fingerprint": BinaryFeistelPermutation,
    "key_fingerprint:radix-feistel-10": RadixFeistelPermutation,
    NEW_FINGERPRINT: AesRadixPermutation,
}


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


def permutation_row(rows: dict[str, bytes], label: str, database: str) -> str:
    """The one fingerprint row of `rows` this release knows, or why the database cannot be served."""
    if not rows:
        raise StoreKeyError(
            f"The {label} store's counter database ({database}) has no record of its key: it was "
            "replaced or emptied, and counting again would re-issue numbers. Restore it, or delete the "
            "stage's folder to reset the stage."
        )
    known = [name for name in rows if name in PERMUTATIONS]
    if len(known) != 1 or len(rows) != 1:
        raise StoreCorruptError(
            f"The {label} store's counter database ({database}) records its key as {sorted(rows)}: "
            "written by a newer release, or damaged. Serving its counters with a permutation other than "
            "theirs could re-issue numbers; run the release that wrote it."
        )
    return known[0]
