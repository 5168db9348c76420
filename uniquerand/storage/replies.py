"""Recorded replies: what makes a draw with an `Idempotency-Key` safe to retry. The first request with a key
records its answer (under a claim of the key) before sending it; a later request with the same key gets
that answer back.

Two ways to a recorded answer. A draw that writes nothing of its own and whose burned numbers nobody misses
(/v5/random's: leased blocks, a space of 2^64) goes the short way, one durable group-committed write: it
draws, then inserts claim and answer as one row (`record_new`). If the key has a row already (a retry, an
identical request that recorded first), that row's answer is sent and this draw's numbers are burned,
never sent; checking for the row before drawing would cost every keyed draw a read to spare a retry a draw.

A named space's draw (a finite space: every number counts; a signed draw also takes a serial) claims first,
then records (two writes, both group-committed): of identical requests at once only one draws. The claim
needs no flush of its own (`claims`: committed, visible to every process and host, not yet durable): the
record's durable commit makes every earlier write durable with it, and a claim lost in a power cut belonged
to a request that had not answered. The claim is the PRIMARY KEY insert of (client, key): one wins, the
other waits for the winner's answer. A claim whose owner died (kill -9 between claiming and recording) is
taken over once it is older than `stale` seconds; the dead owner's numbers were never sent, and a slow owner
that records after a takeover fails its record (the owner changed) and sends nothing, so a key never yields
two answers.
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

    def insert(self, rows: list[tuple], stale: float) -> tuple[str, tuple]:
        """`claim` with its answer for each row (client, key, fingerprint, owner, claimed, expires, status, body;
        no key twice) in one statement, and its parameters: it returns client, key, owner of the rows that went
        in."""


@dataclass
class ReplyStore:
    """The recorded replies of one stage, in the tables `sql` names, written through per-process group
    committers (`claims` not durable, `records` durable) and read with `read(statement, args)` (one row or
    None, outside any group)."""

    sql: ReplySql
    claims: Any
    records: Any
    read: Any
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

    def record_new(self, client: str, key: str, fingerprint: str, status: int, body: bytes) -> Reply:
        """Claims the key and records its answer in one durable write: `claimed` if this answer is the key's, else
        the row that was there first (its answer is the one to send; this one's numbers are burned)."""
        now = time.time()
        owner = uuid.uuid4().hex
        row = (client, key, fingerprint, owner, now, now + self.ttl, status, body, self.stale)
        committer = self.records.get()
        self._claims += 1
        if self._claims % PURGE_EVERY == 0:
            committer.post(lambda c: c.execute(self.sql.purge, (now, PURGE_BATCH)))
        if committer.submit_batched(self._insert_group, row, one_statement=True):
            return Reply(True, owner)
        # The row the insert met was committed before it (a writer waits for an uncommitted one).
        found = self.read(self.sql.select, (client, key))
        if found is None:  # released or purged since: pending to the caller, who claims the slow way
            return Reply(False, fingerprint=fingerprint)
        fingerprint, _, _, status, body = found
        return _found(fingerprint, status, body)

    def record(self, client: str, key: str, owner: str, status: int, body: bytes) -> bool:
        """Records the answer under the caller's claim; False if the claim was taken over (send nothing)."""
        sql = self.sql
        job = lambda c: c.execute(sql.record, (status, body, client, key, owner)).rowcount == 1  # noqa: E731
        return self.records.get().submit(job, writes_once=True)

    def release(self, client: str, key: str, owner: str) -> None:
        """Drops the caller's claim: its request issued nothing, so a retry must be free to issue."""
        job = lambda c: c.execute(self.sql.release, (client, key, owner))  # noqa: E731
        self.claims.get().submit(job, writes_once=True)

    def _insert_group(self, c: Any, rows: list[tuple]) -> list[bool]:
        """The group's answered claims in one statement (on PostgreSQL, a transaction of its own). A key twice in
        the group goes in once (one statement may not update a row twice): the first row's; the others met it."""
        first: dict[tuple[str, str], tuple] = {}
        for row in rows:
            first.setdefault((row[0], row[1]), row)
        statement, args = self.sql.insert([row[:-1] for row in first.values()], self.stale)
        went_in = {tuple(found) for found in c.execute(statement, args).fetchall()}
        return [(row[0], row[1], row[3]) in went_in for row in rows]

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
        return _found(found, status, body)


def _found(fingerprint: str, status: int | None, body: Any) -> Reply:
    """Someone else's row: their request's fingerprint, and their answer once it is recorded."""
    return Reply(False, fingerprint=fingerprint, status=status or 0, body=None if body is None else bytes(body))


def new_committer(
    target: Target, lock_timeout: float, label: str, offload: bool, inline_when_free: bool = False
) -> GroupCommitter:
    busy = lambda: StoreBusyError.of(label)  # noqa: E731
    return GroupCommitter([target], lock_timeout, busy, offload=offload, inline_when_free=inline_when_free)
