"""/v3: the SQLite stage. One database, a PRIMARY KEY per type as the uniqueness check."""

from __future__ import annotations

from flask import Blueprint

from uniquerand.blueprints.common import numbers_response, random_request, stats_response, store

bp = Blueprint("v3", __name__, url_prefix="/v3")


@bp.get("/random")
def random_number():
    kind, count = random_request()
    stage = store("v3")
    return numbers_response(stage.spaces[kind], stage.issue(kind, count or 1), batch=count is not None)


@bp.get("/stats")
def stats():
    return stats_response("v3")
