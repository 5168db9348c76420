"""`Idempotency-Key` on /v5's draws (the IETF httpapi draft's header): the first request with a key issues and
its answer is recorded before it is sent; a retry of the same request gets the same bytes back with
`Idempotent-Replayed: true` and issues nothing. The rules of the store are in `storage.replies`."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

from flask import current_app, g, request
from werkzeug.exceptions import Conflict, UnprocessableEntity

from uniquerand.blueprints.common import JSON_MIMETYPE
from uniquerand.errors import InvalidParameterError
from uniquerand.logs import event
from uniquerand.storage.contract import StoreBusyError, StoreError, StoreUnavailableError
from uniquerand.storage.replies import Reply, ReplyStore

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# How often a request polls for the answer of an identical one in progress: each poll is a claim (a write),
# so the wait grows from the first to the last, lest the waiters crowd out the writes they wait for.
POLL_FIRST, POLL_LONGEST = 0.02, 0.25


class KeyReusedError(UnprocessableEntity):
    def __init__(self) -> None:
        super().__init__(
            description="This Idempotency-Key was used with another request (path or query); use a new key for a "
            "new request."
        )
        self.extra = {"code": "idempotency_key_reused"}


class InProgressError(Conflict):
    """409 with Retry-After: a request with this key is still being answered."""

    def __init__(self) -> None:
        super().__init__(
            description="A request with this Idempotency-Key is still in progress; retry after a moment to get its "
            "answer."
        )
        self.extra = {"code": "request_in_progress"}

    def get_headers(self, environ=None, scope=None) -> list[tuple[str, str]]:
        retry_after = str(current_app.config["RETRY_AFTER"])
        return [*super().get_headers(environ, scope), ("Retry-After", retry_after)]


def idempotency_key() -> str | None:
    """The request's key: 1 to 255 visible ASCII characters, or None without the header; else a 422."""
    values = request.headers.getlist(HEADER)
    if not values:
        return None
    key = values[0]
    if len(values) > 1 or not 1 <= len(key) <= MAX_KEY_LENGTH or not all("!" <= ch <= "~" for ch in key):
        raise InvalidParameterError(
            HEADER, f"Invalid {HEADER}: one header of 1 to {MAX_KEY_LENGTH} visible ASCII characters (no spaces)."
        )
    return key


def answered_once(replies: ReplyStore, key: str, answer: Callable[[], object], writes: bool = True):
    """`answer()` (the view) sent at most once for the key: the recorded response of an earlier run, or a new
    run's, recorded before it is returned. With `writes` (the default) the answer runs only under a claim of
    the key, so identical requests at once run it once. Without, the answer must write nothing of its own: it
    runs first and is recorded with its claim in one write; a retry, or identical requests at once, each run
    it, and send the first recorded answer: the numbers of the others are burned (`storage.replies`)."""
    client = g.get("client_name", "")
    # The request is its path and query, as sent: a retry is the same request byte for byte.
    fingerprint = hashlib.sha256(request.full_path.encode("utf-8", "surrogateescape")).hexdigest()
    if not writes:
        response = current_app.make_response(answer())
        if response.status_code != 200:
            return response
        reply = replies.record_new(client, key, fingerprint, response.status_code, response.get_data())
        if reply.claimed:
            return response
        # The key has a row already (a retry, or an identical request that recorded first): its answer is
        # sent, and this one's numbers are burned.
        if (replayed := _replayed(reply, fingerprint)) is not None:
            return replayed
    deadline, wait = time.monotonic() + current_app.config["LOCK_TIMEOUT"], POLL_FIRST
    while True:
        reply = replies.claim(client, key, fingerprint)
        if reply.claimed:
            break
        if (replayed := _replayed(reply, fingerprint)) is not None:
            return replayed
        if time.monotonic() >= deadline:
            raise InProgressError()
        time.sleep(wait)
        wait = min(POLL_LONGEST, wait * 2)
    try:
        response = current_app.make_response(answer())
    except (StoreBusyError, StoreUnavailableError):
        # A write that may have landed (a signed draw kept under its serial, say): the claim stays, so a retry
        # waits for it to go stale instead of issuing at once.
        raise
    except BaseException:
        # Nothing was issued: a retry issues anew. (If releasing fails too, the claim is taken over later.)
        _release(replies, client, key, reply.owner)
        raise
    if response.status_code != 200:
        _release(replies, client, key, reply.owner)
        return response
    # Recorded durably before it is sent; a record whose outcome is unknown raises (503), and its numbers are
    # burned: the retry replays them if the record did land, else it takes the claim over and issues anew.
    if not replies.record(client, key, reply.owner, response.status_code, response.get_data()):
        raise InProgressError()
    return response


def _replayed(reply: Reply, fingerprint: str):
    """The recorded response of someone else's row; None while it is pending; 422 for another request's key."""
    if reply.fingerprint != fingerprint:
        raise KeyReusedError()
    if reply.body is None:
        return None
    response = current_app.response_class(reply.body, status=reply.status, mimetype=JSON_MIMETYPE)
    response.headers[REPLAYED] = "true"
    return response


def _release(replies: ReplyStore, client: str, key: str, owner: str) -> None:
    try:
        replies.release(client, key, owner)
    except StoreError as err:  # the request's own answer is the one to give
        event(log, "idempotency_release_failed", logging.WARNING, error=str(err))
