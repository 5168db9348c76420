"""Signed draws: Ed25519 signatures over the RFC 8785 canonical JSON of a result, the signing key file, the
public keys as a JWK Set (RFC 8037 OKP keys, `kid` the RFC 7638 thumbprint), and the check a third party runs.

The key file (JSON, 0600) holds the current private key and the public halves of the keys it replaced: a
result signed before a rotation still verifies, and a rotated-out private key is gone from the disk. Every host
of a deployment signs with a copy of the same file (docs/verifiable-draws.md).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# The fields of a signed result, in the order the API shows them; `signature` is over all the others.
FIELDS = ("space", "type", "min", "max", "numbers", "serial", "issued_at", "key_id", "signature")
# JSON numbers are IEEE doubles to RFC 8785: an int beyond this is not signed (it would not round-trip).
SAFE_INTEGER = 2**53 - 1


class SigningKeyError(Exception):
    """The signing key file is missing where it must exist, unreadable, or not one of ours."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_jwk(public: bytes) -> dict[str, str]:
    """The RFC 8037 JWK of a raw 32-byte Ed25519 public key, with its RFC 7638 thumbprint as `kid`."""
    members = {"crv": "Ed25519", "kty": "OKP", "x": b64url(public)}
    kid = b64url(hashlib.sha256(rfc8785.dumps(members)).digest())
    return {**members, "kid": kid, "use": "sig", "alg": "EdDSA"}


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    jwk: dict[str, str]

    @property
    def kid(self) -> str:
        return self.jwk["kid"]

    def sign(self, result: dict[str, Any]) -> dict[str, Any]:
        """`result` (every field but `key_id` and `signature`) signed: with both added."""
        unsigned = {**result, "key_id": self.kid}
        return {**unsigned, "signature": b64url(self.private.sign(rfc8785.dumps(unsigned)))}


class KeyFile:
    """The signing key file at `path`: read once per change of the file (a rotation reaches running workers)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._current: SigningKey | None = None
        self._retired: list[dict[str, str]] = []

    def current(self, create: bool = True) -> SigningKey:
        """The key that signs; with `create`, a first key is made if there is no file (0600, never overwritten)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            if not create:
                raise SigningKeyError(f"There is no signing key file at {self.path}.") from None
            self._write(_new_entry(), [], exclusive=True)
            stat = self.path.stat()
        if self._seen != (stat.st_ino, stat.st_mtime_ns) or self._current is None:
            self._current, self._retired = self._read()
            self._seen = (stat.st_ino, stat.st_mtime_ns)
        return self._current

    def public_keys(self) -> list[dict[str, str]]:
        """The current key's JWK first, then every retired one's; none before the file exists (reading the key
        set makes no key: a host that has not been given its copy yet must not make one of its own)."""
        if not self.path.exists():
            return []
        current = self.current(create=False)
        return [current.jwk, *self._retired]

    def rotate(self) -> tuple[str, str]:
        """A new current key; the old one's public half is kept. Returns (old kid, new kid)."""
        old = self.current()
        entry = _new_entry()
        self._write(entry, [old.jwk, *self._retired], exclusive=False)
        return old.kid, self.current().kid

    def _read(self) -> tuple[SigningKey, list[dict[str, str]]]:
        try:
            document = json.loads(self.path.read_text())
            seed = b64url_decode(document["current"]["d"])
            private = Ed25519PrivateKey.from_private_bytes(seed)
            retired = [public_jwk(b64url_decode(jwk["x"])) for jwk in document.get("retired", [])]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SigningKeyError(f"The signing key file {self.path} cannot be read as one: {err}") from None
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return SigningKey(private, public_jwk(public)), retired

    def _write(self, entry: dict[str, str], retired: list[dict[str, str]], exclusive: bool) -> None:
        document = {"current": entry, "retired": [{"kty": j["kty"], "crv": j["crv"], "x": j["x"]} for j in retired]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(document, handle)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            if exclusive:
                # Another process that made the first key at the same instant wins; this one's is dropped.
                with contextlib.suppress(FileExistsError):
                    os.link(temporary, self.path)
            else:
                os.replace(temporary, self.path)
        finally:
            temporary.unlink(missing_ok=True)


def _new_entry() -> dict[str, str]:
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes_raw()
    created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return {"kty": "OKP", "crv": "Ed25519", "d": b64url(seed), "created": created}


def verify(result: Any, key_set: Any) -> str:
    """Checks a signed result against a JWK Set; returns what it is, or raises ValueError saying what failed."""
    if not isinstance(result, dict):
        raise ValueError("not a signed result: a JSON object is expected")
    missing = [field for field in FIELDS if field not in result]
    if missing:
        raise ValueError(f"not a signed result: it lacks {', '.join(missing)}")
    unknown = sorted(set(result) - set(FIELDS))
    if unknown:
        raise ValueError(f"not a signed result: unknown fields {', '.join(unknown)}")
    keys = key_set.get("keys") if isinstance(key_set, dict) else None
    if not isinstance(keys, list):
        raise ValueError('the key set is not a JWK Set ({"keys": [...]})')
    matching = [key for key in keys if isinstance(key, dict) and key.get("kid") == result["key_id"]]
    if not matching:
        raise ValueError(f"key_id {result['key_id']!r} is not in the key set: it was not signed by these keys")
    key = matching[0]
    try:
        public_bytes = b64url_decode(key["x"])
        public = Ed25519PublicKey.from_public_bytes(public_bytes)
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"the key set's key {result['key_id']!r} is not an Ed25519 key") from None
    if public_jwk(public_bytes)["kid"] != key["kid"]:
        raise ValueError(f"the key set's key {key['kid']!r} is not the key its kid names (RFC 7638 thumbprint)")
    unsigned = {field: value for field, value in result.items() if field != "signature"}
    try:
        public.verify(b64url_decode(result["signature"]), rfc8785.dumps(unsigned))
    except (InvalidSignature, ValueError, TypeError, rfc8785.CanonicalizationError):
        raise ValueError(
            "the signature does not match: a field (a number, the serial, the space, the time or the key_id) was "
            "changed after signing, or another key signed it"
        ) from None
    count = len(result["numbers"]) if isinstance(result["numbers"], list) else "?"
    return (
        f"valid: draw {result['serial']} of space {result['space']!r}, {count} numbers, issued at "
        f"{result['issued_at']}, signed by key {result['key_id']}"
    )


class DrawSigner:
    """Signs a space's draws with the key file's current key and records each under the space's next serial;
    `store` is a `storage.draws.SignedDraws`."""

    def __init__(self, key_file: KeyFile, store: Any) -> None:
        self.key_file = key_file
        self.store = store
        self._published: set[str] = set()

    def sign_draw(self, space: str, fields: dict[str, Any]) -> bytes:
        """The signed body of a draw (`fields`: space, type, min, max, numbers), recorded before it is returned."""
        key = self.key_file.current()
        if key.kid not in self._published:
            # Before the first draw it signs: every host's key set then lists it, whatever its own file holds.
            self.store.publish_key(key.jwk)
            self._published.add(key.kid)

        def build(serial: int) -> bytes:
            issued_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            return rfc8785.dumps(key.sign({**fields, "space": space, "serial": serial, "issued_at": issued_at}))

        return self.store.record(space, build)

    def key_set(self) -> dict[str, list[dict[str, str]]]:
        """Every key that signs or ever signed here or on another host of the store: the current one first."""
        keys = {jwk["kid"]: jwk for jwk in self.key_file.public_keys()}
        for jwk in self.store.published_keys():
            keys.setdefault(jwk["kid"], public_jwk(b64url_decode(jwk["x"])))
        return {"keys": list(keys.values())}
