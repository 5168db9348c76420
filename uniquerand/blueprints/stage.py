"""The HTTP side of a stage, built from its `Stage`: `/random` and `/stats` under the stage's prefix, one
request path for every stage, its differences (lenient `type`, batches, where each number came from) read
from the stage's settings."""

from __future__ import annotations

from time import perf_counter

from flask import Blueprint, jsonify

from uniquerand.blueprints.common import numbers_response, random_request_reader
from uniquerand.errors import code_of
from uniquerand.metrics import Observe
from uniquerand.stages import Stage


def stage_blueprint(stage: Stage, observe: Observe) -> Blueprint:
    """The stage's blueprint; every /random request is reported to `observe` (the metrics)."""
    bp = Blueprint(stage.name, __name__, url_prefix=f"/{stage.name}")
    # Taken once here, not looked up through the app on every request.
    store, spaces = stage.store, stage.store.spaces
    parse = random_request_reader(stage.lenient_type, stage.accepts_count)
    sources = stage.sources

    @bp.get("/random")
    def random_number():
        started, kind = perf_counter(), "none"
        try:
            kind, count = parse()
            issued = store.issue(kind, count or 1)
        except Exception as err:
            observe(kind, code_of(err), "", perf_counter() - started, 0)
            raise
        observe(kind, "ok", "", perf_counter() - started, len(issued.codes))
        if sources is None:
            return numbers_response(spaces[kind], issued.codes, count)
        if count is None:
            return numbers_response(spaces[kind], issued.codes, count, **{sources.single: issued.sources[0]})
        return numbers_response(spaces[kind], issued.codes, count, **{sources.batch: issued.sources})

    @bp.get("/stats")
    def stats():
        return jsonify({"stage": stage.name, "types": store.stats()})

    return bp
