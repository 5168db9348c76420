"""Signed draws as the store keeps them: each space's serials, gapless (the next serial and the draw's record are
one transaction, so a serial exists exactly when its draw does), the signed bodies byte for byte, kept forever,
and the public keys that ever signed one (so every host's key set lists them)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from uniquerand.storage.contract import StoreError

# Serials are SQL BIGINTs; a larger one names no draw.
SERIAL_LIMIT = 2**62


class DrawNotFoundError(StoreError):
    """The space has no signed draw of that serial (yet)."""


class DrawSql(Protocol):
    next_serials: str  # (space, n) -> the last of the space's n new serials
    insert: str  # (space, serial, body)
    select: str  # (space, serial) -> body
    publish_key: str  # (kid, jwk)
    keys: str  # () -> jwk, in the order they were first used


class SignedDraws:
    def __init__(self, sql: DrawSql, committer: Any, reader: Callable[[], Any], label: str) -> None:
        self.sql = sql
        self.label = label
        self._committer = committer
        self._reader = reader

    def record(self, space: str, build: Callable[[int], bytes]) -> bytes:
        """The body `build(serial)` makes for the space's next serial, recorded with it in one durable write."""
        return self._committer.get().submit_batched(self._record_group, (space, build))

    def _record_group(self, connection: Any, items: list[tuple[str, Callable[[int], bytes]]]) -> list[bytes]:
        # A space's serial row is locked until the group commits, so the draws of a group take their serials in
        # one statement per space and are inserted together: the lock is held for a few statements, not a few
        # per draw. Spaces in sorted order: two hosts' groups never wait for each other's rows in a cycle.
        builds: dict[str, list[int]] = {}
        for index, (space, _) in enumerate(items):
            builds.setdefault(space, []).append(index)
        bodies: list[bytes] = [b""] * len(items)
        rows = []
        for space in sorted(builds):
            indexes = builds[space]
            (last,) = connection.execute(self.sql.next_serials, (space, len(indexes))).fetchone()
            for serial, index in enumerate(indexes, start=last - len(indexes) + 1):
                bodies[index] = items[index][1](serial)
                rows.append((space, serial, bodies[index]))
        connection.cursor().executemany(self.sql.insert, rows)
        return bodies

    def get(self, space: str, serial: int) -> bytes:
        row = None
        if 1 <= serial <= SERIAL_LIMIT:
            with self._reader() as connection:
                row = connection.execute(self.sql.select, (space, serial)).fetchone()
        if row is None:
            raise DrawNotFoundError(f"The space {space!r} has no signed draw {serial}.")
        return bytes(row[0])

    def publish_key(self, jwk: dict[str, str]) -> None:
        payload = json.dumps(jwk, sort_keys=True)
        self._committer.get().submit(
            lambda connection: connection.execute(self.sql.publish_key, (jwk["kid"], payload)), writes_once=True
        )

    def published_keys(self) -> list[dict[str, str]]:
        with self._reader() as connection:
            return [json.loads(jwk) for (jwk,) in connection.execute(self.sql.keys).fetchall()]
