"""Structured logs: one line per event, as `key=value` pairs an operator can read and a tool can parse.

Events carry names and counts, never the numbers served: a log must not become a second copy of them.
"""

from __future__ import annotations

import logging
import sys
import time
import weakref
from collections.abc import Callable

HANDLER_NAME = "uniquerand"


# Who else hears of every event (the metrics), whatever the log level: weak references, so that an app that
# is gone (the tests build many) stops listening.
_listeners: list[weakref.WeakMethod] = []


def on_event(listener: Callable[[str, dict[str, object]], None]) -> None:
    """Calls the bound method `listener(name, fields)` for every event from now on, while its object lives."""
    _listeners[:] = [reference for reference in _listeners if reference() is not None]
    _listeners.append(weakref.WeakMethod(listener))


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: object) -> None:
    """Logs the event `name` with its fields, e.g. `event(log, "lease_taken", stage="v5", size=1000)`."""
    for reference in _listeners:
        listener = reference()
        if listener is not None:
            listener(name, fields)
    logger.log(level, name, extra={"event": name, "fields": fields})


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields: dict[str, object] = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "event": getattr(record, "event", None) or record.getMessage(),
            **getattr(record, "fields", {}),
        }
        line = " ".join(f"{key}={_value(value)}" for key, value in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _value(value: object) -> str:
    text = str(value)
    if not text or any(char in text for char in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def configure(level: str) -> None:
    """Sends the `uniquerand` loggers' records to stderr (gunicorn's error log), once per process."""
    logger = logging.getLogger("uniquerand")
    logger.setLevel(level)
    if any(handler.get_name() == HANDLER_NAME for handler in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(LogfmtFormatter())
    logger.addHandler(handler)
    logger.propagate = False
