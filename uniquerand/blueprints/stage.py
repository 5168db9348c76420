"""The HTTP side of a stage, built from its `Stage`: `/random` and `/stats` under the stage's prefix, one
request path for every stage, its differences (lenient `type`, batches, where each number came from) read
from the stage's settings."""

from __future__ import annotations

from time import perf_counter

from flask import Blueprint, g, jsonify, request
from werkzeug.exceptions import HTTPException

from uniquerand.blueprints.access import BearerGuard, client_name
from uniquerand.blueprints.common import numbers_response, random_request_reader
from uniquerand.blueprints.idempotency import answered_once, idempotency_key
from uniquerand.errors import code_of
from uniquerand.metrics import Observe
from uniquerand.scopes import DRAW_ANY
from uniquerand.stages import Stage


def stage_blueprint(stage: Stage, observe: Observe, guard: BearerGuard | None = None) -> Blueprint:
    """The stage's blueprint; every /random request is reported to `observe` (the metrics), with the client's
    name when `guard` requires a token on both paths."""
    bp = Blueprint(stage.name, __name__, url_prefix=f"/{stage.name}")
    # Taken once here, not looked up through the app on every request.
    store, spaces = stage.store, stage.store.spaces
    parse = random_request_reader(stage.lenient_type, stage.accepts_count)
    sources = stage.sources
    client_of = _anonymous if guard is None else client_name
    replies = stage.replies

    @bp.get("/random")
    def random_number():
        # Only /v5 records answers; the seed's stages ignore the header, as the document describes them.
        if replies is not None and (key := idempotency_key()) is not None:
            # Its numbers come from leased blocks (no write of its own) in a space of 2^64: the short way, whose
            # only cost, a race's burned numbers, nobody misses. A named space's draws claim first, losing none.
            return answered_once(replies, key, issue, writes=False)
        return issue()

    def issue():
        started, kind, client = perf_counter(), "none", client_of()
        try:
            kind, count = parse()
            issued = store.issue(kind, count or 1)
        except Exception as err:
            observe(kind, code_of(err), client, perf_counter() - started, 0)
            raise
        observe(kind, "ok", client, perf_counter() - started, len(issued.codes))
        if sources is None:
            return numbers_response(spaces[kind], issued.codes, count)
        if count is None:
            return numbers_response(spaces[kind], issued.codes, count, **{sources.single: issued.sources[0]})
        return numbers_response(spaces[kind], issued.codes, count, **{sources.batch: issued.sources})

    @bp.get("/stats")
    def stats():
        return jsonify({"stage": stage.name, "types": store.stats()})

    if guard is not None:
        random_endpoint = f"{stage.name}.random_number"

        @bp.before_request
        def require_token():
            # Before the view: a refused request parses nothing and touches no store.
            started = perf_counter()
            try:
                g.client_name = guard.client(DRAW_ANY)
            except HTTPException as err:
                if request.endpoint == random_endpoint:
                    observe("none", code_of(err), "", perf_counter() - started, 0)
                raise

    return bp


def _anonymous() -> str:
    return ""
