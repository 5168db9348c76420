"""/v4: the sharded SQLite stage. Numbers are claimed from pools filled in the background from a ledger."""

from __future__ import annotations

from flask import Blueprint

from uniquerand.blueprints.common import numbers_response, random_request, stats_response, store

bp = Blueprint("v4", __name__, url_prefix="/v4")


@bp.get("/random")
def random_number():
    kind, count = random_request()
    stage = store("v4")
    claimed = stage.claim(kind, count or 1)
    codes = [code for code, _ in claimed]
    if count is None:
        return numbers_response(stage.spaces[kind], codes, shard=claimed[0][1])
    return numbers_response(stage.spaces[kind], codes, batch=True, shards=[shard for _, shard in claimed])


@bp.get("/stats")
def stats():
    return stats_response("v4")
