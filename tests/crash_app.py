"""The app of wsgi.py, whose worker kills itself (SIGKILL) at a chosen instant of a draw with an Idempotency-Key:
before its answer is recorded (key `die-before-record...`, the first request with the key only: a marker file
in the instance folder says it died once) or after it is recorded and before it is sent (`die-after-record...`).
For the fault tests of tests/test_idempotency.py: `gunicorn tests.crash_app:app`."""

import os
import signal
from pathlib import Path

from uniquerand.storage.replies import ReplyStore
from wsgi import app

_record = ReplyStore.record


def _record_then_maybe_die(self, client, key, owner, status, body):
    if key.startswith("die-before-record"):
        marker = Path(app.config["INSTANCE_PATH"]) / f"died-{key}"
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
    recorded = _record(self, client, key, owner, status, body)
    if key.startswith("die-after-record"):
        os.kill(os.getpid(), signal.SIGKILL)
    return recorded


ReplyStore.record = _record_then_maybe_die
__all__ = ["app"]
