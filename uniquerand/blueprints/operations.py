"""What operators' tools ask: `/readyz` (can every stage serve now? for a load balancer) and `/metrics`
(Prometheus). `/healthz` (the process answers) is the index's."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from uniquerand.errors import code_of
from uniquerand.storage.contract import StoreError

bp = Blueprint("operations", __name__)


@bp.get("/readyz")
def readyz():
    """200 when every stage's store can serve now; else 503 naming the stages that cannot, why (`stages`), and
    the code each would answer with (`codes`: `store_key_invalid` for a host without the database's /v5 key,
    say). Tokens that cannot be checked (an unreadable tokens file) keep every stage from serving."""
    extensions = current_app.extensions["uniquerand"]
    guard = extensions["guard"]
    refused = guard.check_ready() if guard is not None else None
    faults: dict[str, str] = {}
    codes: dict[str, str] = {}
    for stage in extensions["stages"]:
        try:
            stage.store.check_ready()
        except StoreError as err:
            faults[stage.name], codes[stage.name] = str(err), code_of(err)
        if refused and stage.name not in faults:
            faults[stage.name], codes[stage.name] = refused, "tokens_unavailable"
    if not faults:
        return jsonify({"status": "ready"})
    names = ", ".join(f"/{name}" for name in faults)
    body = {"error": f"Not ready: {names} cannot serve now.", "code": "not_ready", "stages": faults, "codes": codes}
    response = jsonify(body)
    response.status_code = 503
    response.headers["Retry-After"] = str(current_app.config["RETRY_AFTER"])
    return response


@bp.get("/metrics")
def metrics():
    if current_app.config["METRICS_REQUIRE_TOKEN"]:
        current_app.extensions["uniquerand"]["guard"].client()
    body, content_type = current_app.extensions["uniquerand"]["metrics"].exposition()
    return Response(body, content_type=content_type)
