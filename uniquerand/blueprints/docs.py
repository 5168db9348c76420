"""The API document (`/openapi.json`), its page (`/docs`, assets served by the app), and OPTIONS answered as
JSON on every path."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from uniquerand.openapi import build_document

bp = Blueprint("docs", __name__)


@bp.get("/openapi.json")
def openapi():
    return jsonify(build_document(current_app))


@bp.get("/docs")
def docs():
    return current_app.send_static_file("docs/index.html")


@bp.before_app_request
def answer_options():
    """OPTIONS on any known path: 200, `Allow`, and the same list as JSON, without running the view.

    Flask's own automatic answer has an empty body; every response of this API with a body is JSON.
    A path that does not exist, or does not take OPTIONS, falls through to the JSON 404 or 405.
    """
    if request.method != "OPTIONS" or request.url_rule is None:
        return None
    methods = sorted(request.url_rule.methods or ())
    response = jsonify({"allow": methods})
    response.headers["Allow"] = ", ".join(methods)
    return response
