"""/v5: unique by construction. A keyed permutation of a counter leased in blocks; nothing to look up."""

from __future__ import annotations

from flask import Blueprint

from uniquerand.blueprints.common import numbers_response, random_request, stats_response, store

bp = Blueprint("v5", __name__, url_prefix="/v5")


@bp.get("/random")
def random_number():
    kind, count = random_request()
    stage = store("v5")
    return numbers_response(stage.spaces[kind], stage.issue(kind, count or 1), batch=count is not None)


@bp.get("/stats")
def stats():
    return stats_response("v5")
