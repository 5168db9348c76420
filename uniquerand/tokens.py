"""Access tokens: a file of their SHA-256 hashes, one `name<TAB>hash<TAB>created[<TAB>scopes]` line per client,
written by `flask tokens` and read by the server, which re-reads it when it changes. Knows files, never Flask or
HTTP.

Scopes say what a token may do: `spaces:admin` (create named spaces), `draw:NAME` (draw from the named space
NAME), `draw:*` (draw from every space and every stage). A line without scopes, as every line was before scopes
existed, means `draw:*`: such a token keeps drawing everywhere and cannot create spaces.

Concurrency and durability: a change writes a whole new file and renames it over the old one (file and folder
fsynced), so a reader sees the old file or the new one, never half a line; writers hold a lock file beside it,
so two commands never lose each other's change. A file that cannot be read or parsed checks no token: every
caller of `verify` gets `TokenFileError` (fail closed), and no command writes over it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import filelock

from uniquerand.scopes import ADMIN_SCOPE, DRAW_ANY, SCOPE_PATTERN, UNSCOPED, check_scopes
from uniquerand.storage.durable import fsync_path

# A token is recognisable (secret scanners, logs someone pasted) and carries 256 random bits.
TOKEN_PREFIX = "urt_"
TOKEN_BYTES = 32
# Names become metric labels and log fields: a short, quote-free alphabet.
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
_CREATED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
HEADER = (
    "# uniquerand access tokens: name, SHA-256 of the token (hex), created (UTC), scopes (comma-separated; none\n"
    "# means draw:*). Never the tokens themselves.\n"
    "# Change with `flask tokens create NAME` / `flask tokens revoke NAME`; servers re-read this file on change.\n"
)
# A file's mtime has the kernel's clock tick as granularity (coarse, and 2 s on some filesystems): a file
# changed this recently may change again without its (size, inode, mtime) changing, so it is read again on
# every check until it is older (git's "racily clean" rule).
RACY_NS = 2_000_000_000
# A tokens file is small (about 110 bytes a token); a larger one is a wrong path, not a list of clients.
MAX_FILE_BYTES = 16 * 1024 * 1024
LOCK_TIMEOUT = 10.0


class TokenFileError(Exception):
    """The tokens file is missing, unreadable or malformed: no token can be checked."""


class TokenNameError(ValueError):
    """A client name or scope that is not allowed, a name already taken, or one not in the file."""


@dataclass(frozen=True)
class TokenEntry:
    name: str
    digest: bytes
    # "" for a line written by hand without it.
    created: str = ""
    # As written in the file; () for a line without scopes (see `granted`).
    scopes: tuple[str, ...] = ()

    @property
    def granted(self) -> tuple[str, ...]:
        return self.scopes or UNSCOPED

    def allows(self, scope: str) -> bool:
        """Whether this token may do what `scope` names: `draw:*` covers every `draw:NAME`."""
        granted = self.granted
        return scope in granted or (scope.startswith("draw:") and DRAW_ANY in granted)


@dataclass(frozen=True)
class _Snapshot:
    """The file as last read: what a request checks a token against."""

    key: tuple[int, ...]
    data: bytes
    entries: tuple[TokenEntry, ...]
    # (digest, entry) of every entry: the loop of `identify`, without attribute lookups.
    pairs: tuple[tuple[bytes, TokenEntry], ...]
    error: str | None
    # False while the file is racily recent: the key alone cannot tell a later change.
    trusted: bool


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def digest_of(token: str) -> bytes:
    """SHA-256, not a slow password hash: a token has 256 random bits, so its hash cannot be searched back."""
    return hashlib.sha256(token.encode()).digest()


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise TokenNameError(f"{name!r} is not a valid name: use 1 to 64 of A-Z a-z 0-9 . _ -")
    return name


def parse_entries(text: str) -> tuple[TokenEntry, ...]:
    """The entries of a tokens file's text; blank lines and `#` comments are skipped. Raises TokenFileError
    naming the first bad line (never its content)."""
    entries: list[TokenEntry] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if not 2 <= len(fields) <= 4 or not NAME_PATTERN.fullmatch(fields[0]) or not _DIGEST.fullmatch(fields[1]):
            raise TokenFileError(f"line {number} is not `name<TAB>sha256-hex[<TAB>created][<TAB>scopes]`")
        created, scopes = _optional_fields(number, fields[2:])
        entry = TokenEntry(fields[0], bytes.fromhex(fields[1]), created, scopes)
        if entry.name in names or entry.digest in digests:
            raise TokenFileError(f"line {number} repeats a name or a hash of an earlier line")
        names.add(entry.name)
        digests.add(entry.digest)
        entries.append(entry)
    return tuple(entries)


def _optional_fields(number: int, fields: list[str]) -> tuple[str, tuple[str, ...]]:
    """A line's created time and scopes, either of which a hand-written line may leave out (in this order)."""
    created = fields.pop(0) if fields and _CREATED.fullmatch(fields[0]) else ""
    if len(fields) > 1 or (fields and _CREATED.fullmatch(fields[0])):
        raise TokenFileError(f"line {number}: created must come before the scopes, once")
    scopes = tuple(fields[0].split(",")) if fields else ()
    if not all(SCOPE_PATTERN.fullmatch(scope) for scope in scopes):
        raise TokenFileError(
            f"line {number}: created must look like 2026-01-31T12:00:00Z and scopes like {ADMIN_SCOPE},draw:tickets"
        )
    return created, scopes


class TokenFile:
    """The tokens file at `path` (a symlink is followed on every read, so a swapped target is picked up)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._path = str(path)
        self._snapshot: _Snapshot | None = None

    def identify(self, token: str) -> TokenEntry | None:
        """The entry whose token this is, or None. The presented token's hash is compared with every stored hash
        in constant time, so the time taken does not tell which entry (if any) matched."""
        digest, compare, match = digest_of(token), hmac.compare_digest, None
        for stored, entry in self._current().pairs:
            if compare(stored, digest):
                match = entry
        return match

    def verify(self, token: str) -> str | None:
        """The name of the client whose token this is, or None."""
        entry = self.identify(token)
        return None if entry is None else entry.name

    def entries(self) -> tuple[TokenEntry, ...]:
        """The file's entries. Raises TokenFileError while it is missing, unreadable or malformed."""
        return self._current().entries

    def _current(self) -> _Snapshot:
        """The file as it is now: one stat, and a read only when its (device, inode, size, mtime, ctime)
        changed, so that a change is seen by the very next request."""
        try:
            status = os.stat(self._path)
        except OSError as err:
            raise TokenFileError(f"{self.path} cannot be read: {err.strerror}") from None
        snapshot = self._snapshot
        if snapshot is None or not snapshot.trusted or snapshot.key != _key(status):
            # Threads that race here read the file twice; each result is a whole snapshot.
            snapshot = self._snapshot = self._read(snapshot)
        if snapshot.error is not None:
            raise TokenFileError(snapshot.error)
        return snapshot

    def _read(self, previous: _Snapshot | None) -> _Snapshot:
        try:
            # O_NONBLOCK: a FIFO at the path must not hang the request (it is refused below, unread).
            with os.fdopen(os.open(self._path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as file:
                status = os.fstat(file.fileno())
                problem = _unsafe(status)
                data = b"" if problem else file.read(MAX_FILE_BYTES + 1)
        except OSError as err:
            # Not cached: a file that cannot be opened has no key to notice its repair by.
            raise TokenFileError(f"{self.path} cannot be read: {err.strerror}") from None
        trusted = time.time_ns() - status.st_mtime_ns > RACY_NS
        if problem is None and previous is not None and previous.error is None and previous.data == data:
            # Read again while racily recent, unchanged: parsed once (a large file takes milliseconds).
            return _Snapshot(_key(status), data, previous.entries, previous.pairs, None, trusted)
        if problem is None and len(data) > MAX_FILE_BYTES:
            problem = f"is over {MAX_FILE_BYTES} bytes: not a tokens file"
        entries: tuple[TokenEntry, ...] = ()
        if problem is None:
            try:
                entries = parse_entries(data.decode("utf-8"))
            except UnicodeDecodeError:
                problem = "is not UTF-8 text"
            except TokenFileError as err:
                problem = str(err)
        error = None if problem is None else f"{self.path} {problem}"
        pairs = tuple((entry.digest, entry) for entry in entries)
        return _Snapshot(_key(status), data, entries, pairs, error, trusted)

    def create(self, name: str, scopes: tuple[str, ...] = ()) -> str:
        """Adds a token for the client `name`, allowed `scopes` (none: `draw:*`), and returns it: the only time it
        exists outside the client."""
        check_name(name)
        scopes = check_scopes(scopes)
        token = new_token()
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self._locked():
            text = self._text_for_update()
            if any(entry.name == name for entry in parse_entries(text)):
                raise TokenNameError(f"a token named {name!r} exists: revoke it first, or choose another name")
            if text and not text.endswith("\n"):
                text += "\n"
            line = f"{name}\t{digest_of(token).hex()}\t{created}" + ("\t" + ",".join(scopes) if scopes else "")
            self._replace((text or HEADER) + line + "\n")
        return token

    def revoke(self, name: str) -> None:
        """Removes the client `name`'s token; servers refuse it from their next request on."""
        check_name(name)
        with self._locked():
            lines = self._text_for_update().splitlines(keepends=True)
            kept = [line for line in lines if (line.split() or [""])[0] != name]
            if len(kept) == len(lines):
                raise TokenNameError(f"no token is named {name!r}")
            self._replace("".join(kept))

    def _text_for_update(self) -> str:
        """The current text ("" when there is no file yet); a malformed file is never written over."""
        try:
            text = Path(os.path.realpath(self.path)).read_bytes().decode("utf-8")
        except FileNotFoundError:
            return ""
        except (OSError, UnicodeDecodeError) as err:
            raise TokenFileError(f"{self.path} cannot be read: {err}") from None
        try:
            parse_entries(text)
        except TokenFileError as err:
            raise TokenFileError(f"{self.path}: {err}; fix or remove that line first") from None
        return text

    def _locked(self) -> filelock.BaseFileLock:
        target = Path(os.path.realpath(self.path))
        target.parent.mkdir(parents=True, exist_ok=True)
        return filelock.FileLock(f"{target}.lock", timeout=LOCK_TIMEOUT)

    def _replace(self, text: str) -> None:
        """Writes `text` as the file's new content: a new file (0600, or the old one's mode and owner) renamed
        over the old one, so that a server reading it sees one or the other whole."""
        target = Path(os.path.realpath(self.path))
        try:
            previous = os.stat(target)
        except FileNotFoundError:
            previous = None
        descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(descriptor, "wb") as file:
                if previous is not None:
                    # Never writable by others: a server refuses such a file.
                    os.fchmod(file.fileno(), stat.S_IMODE(previous.st_mode) & ~stat.S_IWOTH)
                    # Kept when the command runs as root for a server running as its own user.
                    with suppress(PermissionError):
                        os.fchown(file.fileno(), previous.st_uid, previous.st_gid)
                file.write(text.encode("utf-8"))
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        fsync_path(target.parent)


def _key(status: os.stat_result) -> tuple[int, ...]:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


def _unsafe(status: os.stat_result) -> str | None:
    if not stat.S_ISREG(status.st_mode):
        return "is not a regular file"
    if status.st_mode & stat.S_IWOTH:
        # Anyone could add a hash of their own: refused, as ssh refuses such an authorized_keys.
        return "is writable by every user: chmod o-w it"
    return None
