"""/v2: the "FastAPI" stage. Same JSON store as /v1, with validated input and a documented API."""

from __future__ import annotations

from flask import Blueprint

from uniquerand.blueprints.common import numbers_response, random_request, stats_response, store

bp = Blueprint("v2", __name__, url_prefix="/v2")


@bp.get("/random")
def random_number():
    kind, count = random_request()
    stage = store("v2")
    return numbers_response(stage.spaces[kind], stage.issue(kind, count or 1), batch=count is not None)


@bp.get("/stats")
def stats():
    return stats_response("v2")
