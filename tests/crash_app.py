"""The app of wsgi.py, whose worker kills itself (SIGKILL) at a chosen instant of a draw with an Idempotency-Key:
before its answer is recorded (key `die-before-record...`) or after it is recorded and before it is sent
(`die-after-record...`); the first request with the key only (a marker file in the instance folder says it died
once).
Also a draw from the space `busy-once` that issues, then fails as a store that timed out (503 store_busy), the
first time only: a write whose outcome is unknown.
For the fault tests of tests/test_idempotency.py: `gunicorn tests.crash_app:app`."""

import os
import signal
from pathlib import Path

from uniquerand.storage.contract import StoreBusyError
from uniquerand.storage.replies import ReplyStore
from uniquerand.storage.spaces import NamedSpaces
from wsgi import app

_record, _record_new = ReplyStore.record, ReplyStore.record_new


def _die_once(key: str) -> None:
    marker = Path(app.config["INSTANCE_PATH"]) / f"died-{key}"
    if not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)


def _maybe_die_before(key: str) -> None:
    if key.startswith("die-before-record"):
        _die_once(key)


def _maybe_die_after(key: str) -> None:
    # Once: /v5/random's retry writes too (and finds the record).
    if key.startswith("die-after-record"):
        _die_once(key)


def _record_then_maybe_die(self, client, key, owner, status, body):
    _maybe_die_before(key)
    recorded = _record(self, client, key, owner, status, body)
    _maybe_die_after(key)
    return recorded


def _record_new_then_maybe_die(self, client, key, fingerprint, status, body):
    # /v5/random's short way: claim and answer in one write.
    _maybe_die_before(key)
    reply = _record_new(self, client, key, fingerprint, status, body)
    _maybe_die_after(key)
    return reply


_issue = NamedSpaces.issue


def _issue_then_maybe_time_out(self, name, count=1):
    answer = _issue(self, name, count)
    marker = Path(app.config["INSTANCE_PATH"]) / "timed-out-once"
    if name == "busy-once" and not marker.exists():
        marker.touch()
        raise StoreBusyError.of("v5")
    return answer


ReplyStore.record = _record_then_maybe_die
ReplyStore.record_new = _record_new_then_maybe_die
NamedSpaces.issue = _issue_then_maybe_time_out
__all__ = ["app"]
