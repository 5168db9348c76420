"""Recorded replies: what makes a draw with an `Idempotency-Key` safe to retry. The first request with a key
claims it (a row, pending), issues, then records its answer under the claim before sending it; a
later request with the same key gets that answer back and issues nothing.

Why claim first, then record (two writes, both group-committed): two identical requests arriving together
must not both issue. The claim needs no flush of its own (`claims`: committed, visible to every process and
host, not yet durable): the record's durable commit makes every earlier write durable with it, and a claim
lost in a power cut belonged to a request that had not answered. So a keyed draw costs one durable write.
The claim is the PRIMARY KEY insert of (client, key): one wins, the other waits for the
winner's answer. A claim whose owner died (kill -9 between claiming and recording) is taken over once it is
older than `stale` seconds; the dead owner's numbers were never sent, and a slow owner that records after a
takeover fails its record (the owner changed) and sends nothing, so a key never yields two answers.
Keys are per client (the token's name, "" without tokens), so no client can read another's answers. Rows
expire `ttl` seconds after their claim and are purged in bounded batches as new claims arrive.
Time is the app hosts' clock (seconds since the epoch): hosts sharing a database should keep NTP time.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from uniquerand.storage.contract import StoreBusyError
from uniquerand.storage.group_commit import GroupCommitter, Target

# A process purges expired rows every PURGE_EVERY claims, at most PURGE_BATCH rows at a time.
PURGE_EVERY = 256
PURGE_BATCH = 1000


@dataclass(frozen=True)
class Reply:
    """What a claim found: `claimed` (the caller issues and records under `owner`), or someone else's claim
    of the key (`fingerprint`, and the recorded `status` and `body` once it is done; `body` None: pending)."""

    claimed: bool
    owner: str = ""
    fingerprint: str = ""
    status: int = 0
    body: bytes | None = None


class ReplySql(Protocol):
    """A backend's statements (placeholders in its own style) and how its rows read."""

    # (client, key, fingerprint, owner, claimed, expires, stale) -> owner: a new row, or one that expired or
    # whose claim went stale (`stale` seconds old, same request, no answer) claimed anew; nothing otherwise.
    claim: str
    select: str  # (client, key) -> fingerprint, owner, claimed, status, body
    record: str  # (status, body, client, key, owner)
    release: str  # (client, key, owner)
    purge: str  # (now, limit)


@dataclass
class ReplyStore:
    """The recorded replies of one stage, in the tables `sql` names, written through per-process group
    committers: `claims` not durable, `records` durable."""

    sql: ReplySql
    claims: Any
    records: Any
    label: str
    ttl: float
    stale: float
    _claims: int = field(default=0, init=False)

    def claim(self, client: str, key: str, fingerprint: str) -> Reply:
        """Claims the key for a new request, or tells who has it: one write, flushed by the next record's."""
        owner = uuid.uuid4().hex
        now = time.time()
        self._claims += 1
        purge = self._claims % PURGE_EVERY == 0
        # One write, the first statement (the typical claim needs no savepoint); a purge's needs one.
        return self.claims.get().submit(
            lambda c: self._claim(c, client, key, fingerprint, owner, now, purge), writes_once=not purge
        )

    def record(self, client: str, key: str, owner: str, status: int, body: bytes) -> bool:
        """Records the answer under the caller's claim; False if the claim was taken over (send nothing)."""
        sql = self.sql
        job = lambda c: c.execute(sql.record, (status, body, client, key, owner)).rowcount == 1  # noqa: E731
        return self.records.get().submit(job, writes_once=True)

    def release(self, client: str, key: str, owner: str) -> None:
        """Drops the caller's claim: its request issued nothing, so a retry must be free to issue."""
        job = lambda c: c.execute(self.sql.release, (client, key, owner))  # noqa: E731
        self.claims.get().submit(job, writes_once=True)

    def _claim(self, c: Any, client: str, key: str, fingerprint: str, owner: str, now: float, purge: bool) -> Reply:
        sql = self.sql
        if purge:
            c.execute(sql.purge, (now, PURGE_BATCH))
        args = (client, key, fingerprint, owner, now, now + self.ttl, self.stale)
        if c.execute(sql.claim, args).fetchone() is not None:
            return Reply(True, owner)
        row = c.execute(sql.select, (client, key)).fetchone()
        if row is None:  # released or purged since: pending to the caller, who asks again
            return Reply(False, fingerprint=fingerprint)
        found, _, _, status, body = row
        return Reply(False, fingerprint=found, status=status or 0, body=None if body is None else bytes(body))


def new_committer(target: Target, lock_timeout: float, label: str, offload: bool) -> GroupCommitter:
    return GroupCommitter([target], lock_timeout, lambda: StoreBusyError.of(label), offload=offload)
