"""The API document (`/openapi.json`), its page (`/docs`: Swagger UI, every file served by the app), and
OPTIONS answered as JSON on every path."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from flask import Blueprint, current_app, jsonify, request

from uniquerand.openapi import build_document


def _swagger_ui_dist() -> Path:
    """Swagger UI's own dist folder, as the pinned flask-swagger-ui ships it (requirements.txt). Only its files
    are used: its blueprint's page has an inline script and a top bar that loads any URL typed into it."""
    spec = importlib.util.find_spec("flask_swagger_ui")
    if spec is None or spec.origin is None:
        raise RuntimeError("/docs needs flask-swagger-ui (requirements.txt): pip install -r requirements.txt")
    return Path(spec.origin).parent / "dist"


# The page and its init script are the app's (uniquerand/static/docs/); Swagger UI is under /docs/swagger-ui/.
bp = Blueprint("docs", __name__, static_folder=_swagger_ui_dist(), static_url_path="/docs/swagger-ui")


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
