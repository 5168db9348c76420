"""The one place where an error becomes an HTTP response: always JSON with an "error" message."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, UnprocessableEntity

from uniquerand.logs import event
from uniquerand.storage.contract import (
    HeldElsewhereError,
    InsufficientRemainingError,
    RetriesExhaustedError,
    ShardsEmptyError,
    SpaceExhaustedError,
    StoreBusyError,
    StoreCorruptError,
    StoreError,
    StoreKeyError,
    StoreUnavailableError,
)
from uniquerand.storage.draws import DrawNotFoundError
from uniquerand.storage.spaces import SpaceConflictError, SpaceNotFoundError

log = logging.getLogger(__name__)

# status, machine-readable code, whether a retry may succeed (and so Retry-After is sent)
STORE_ERROR_RESPONSES: dict[type[StoreError], tuple[int, str, bool]] = {
    StoreBusyError: (503, "store_busy", True),
    StoreUnavailableError: (503, "store_unavailable", True),
    RetriesExhaustedError: (503, "retries_exhausted", True),
    SpaceExhaustedError: (503, "space_exhausted", False),
    HeldElsewhereError: (503, "held_elsewhere", True),
    InsufficientRemainingError: (503, "insufficient_remaining", False),
    StoreCorruptError: (500, "store_corrupt", False),
    StoreKeyError: (500, "store_key_invalid", False),
    ShardsEmptyError: (503, "shards_empty", True),
    SpaceNotFoundError: (404, "space_not_found", False),
    SpaceConflictError: (409, "space_conflict", False),
    DrawNotFoundError: (404, "draw_not_found", False),
}


class InvalidParameterError(UnprocessableEntity):
    """A query parameter has a value the endpoint does not accept."""

    def __init__(self, parameter: str, message: str, **details: Any) -> None:
        super().__init__(description=message)
        self.extra = {"code": "invalid_parameter", "parameter": parameter, **details}


def json_error(status: int, message: str, **extra: Any):
    response = jsonify({"error": message, **extra})
    response.status_code = status
    return response


def handle_http_exception(error: HTTPException):
    # get_response() keeps the headers werkzeug sets (Allow on 405); only the body is replaced.
    response = error.get_response()
    body = {"error": error.description, "code": getattr(error, "extra", {}).get("code", _slug(error))}
    body.update(getattr(error, "extra", {}))
    # jsonify's bytes outside debug mode (compact, then a newline), like every other body of this API, without
    # building a second response.
    response.set_data(current_app.json.dumps(body, separators=(",", ":")) + "\n")
    response.content_type = "application/json"
    return response


def _store_response(error: StoreError) -> tuple[int, str, bool]:
    return next(
        (STORE_ERROR_RESPONSES[cls] for cls in type(error).__mro__ if cls in STORE_ERROR_RESPONSES),
        (500, "store_error", False),
    )


def code_of(error: BaseException) -> str:
    """The `code` of the JSON body `error` is answered with (for the metrics' outcome label)."""
    if isinstance(error, StoreError):
        return _store_response(error)[1]
    if isinstance(error, HTTPException):
        return getattr(error, "extra", {}).get("code", _slug(error))
    return "internal_error"


def handle_store_error(error: StoreError):
    status, code, retryable = _store_response(error)
    extra: dict[str, Any] = {"code": code}
    if isinstance(error, InsufficientRemainingError):
        extra.update(requested=error.requested, remaining=error.remaining)
    level = logging.ERROR if status == 500 else logging.WARNING
    fields = {"code": code, "status": status, "path": request.path, "message": str(error)}
    if client := g.get("client_name"):  # the token's name, with TOKENS_FILE set
        fields["client"] = client
    if error.detail:
        fields["detail"] = error.detail
    event(log, "store_error", level, **fields)
    response = json_error(status, str(error), **extra)
    if retryable:
        response.headers["Retry-After"] = str(current_app.config["RETRY_AFTER"])
    return response


def handle_unexpected(error: Exception):
    log.exception("unhandled_error", extra={"event": "unhandled_error", "fields": {"path": request.path}})
    return json_error(500, "Internal server error. The fault was logged.", code="internal_error")


def _slug(error: HTTPException) -> str:
    return (error.name or "error").lower().replace(" ", "_").replace("'", "")


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(StoreError, handle_store_error)
    app.register_error_handler(Exception, handle_unexpected)
