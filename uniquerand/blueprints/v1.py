"""/v1: the simple server. One JSON file of used numbers; `type=float` is read leniently."""

from __future__ import annotations

from flask import Blueprint

from uniquerand.blueprints.common import lenient_type, numbers_response, stats_response, store

bp = Blueprint("v1", __name__, url_prefix="/v1")


@bp.get("/random")
def random_number():
    kind = lenient_type()
    stage = store("v1")
    return numbers_response(stage.spaces[kind], stage.issue(kind))


@bp.get("/stats")
def stats():
    return stats_response("v1")
