"""The app's own endpoints: the index of stages and the health check."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, url_for

from uniquerand.blueprints.common import json_text_response

bp = Blueprint("index", __name__)


@bp.get("/")
def index():
    stages = [
        {
            "prefix": f"/{stage.name}",
            "description": stage.description,
            "store": stage.store_description,
            "links": {
                "random": url_for(f"{stage.name}.random_number"),
                "random_float": url_for(f"{stage.name}.random_number", type="float"),
                "stats": url_for(f"{stage.name}.stats"),
            },
        }
        for stage in current_app.extensions["uniquerand"]["stages"]
    ]
    return jsonify({"service": "uniquerand", "stages": stages, "health": url_for("index.healthz")})


@bp.get("/healthz")
def healthz():
    # Written as the stages write a single number (see `json_text_response`): the benchmark's baseline.
    return json_text_response('{"status":"ok"}\n')
