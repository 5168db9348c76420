"""The OpenAPI 3.1 document of the whole API, built from the registered stages and the config (its error bodies,
headers and shared responses: `openapi_components`): a stage added to `uniquerand.stages.build_stages` is
documented without editing this."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from flask import Flask

from uniquerand.numbers import KINDS
from uniquerand.openapi_components import BEARER_SCHEME, NO_STORE, build_components, closed_object, error_response
from uniquerand.openapi_draws import keyed
from uniquerand.openapi_spaces import spaces_paths

Schema = dict[str, Any]

API_VERSION = "0.1.0"
OPTIONS_METHODS = ("GET", "HEAD", "OPTIONS")

DESCRIPTION = """Globally unique random numbers over HTTP: every stage serves each number at most once.

Every response is JSON with `Cache-Control: no-store` (except `/docs`, a page, and its assets), and every
error body has an `error` message and a machine-readable `code`:

* **404** `not_found`: unknown path.
* **405** `method_not_allowed`: a method other than GET, HEAD or OPTIONS; the `Allow` header lists the
  methods the path accepts.
* **HEAD** answers like GET without a body. On `/vN/random` it issues (and so burns) numbers like GET.
* **OPTIONS** answers 200 with the `Allow` header and `{"allow": [...]}`; it never touches a store.
* Query parameters not listed here are ignored. On stages that validate, `type` and `count` may each be
  given at most once (422 otherwise); `/v1` reads the first `type` and never answers 422.
* A request line longer than 4094 bytes is refused by gunicorn with 414 before the app sees it.
"""

TOKENS_DESCRIPTION = """
This server requires access tokens: the operations marked with a lock need `Authorization: Bearer <token>`
(on /docs: **Authorize**). An operator creates one per client with `flask tokens create NAME --scope ...`.
Scopes: `spaces:admin` creates spaces and reads any; `draw:NAME` draws from (and reads) the space NAME;
`draw:*` draws from every space and every stage. A token created without a scope has `draw:*`.

* **401** `unauthorized`: no token, a malformed one, or one that is wrong or revoked, with
  `WWW-Authenticate: Bearer`. Nothing was issued and no store was touched.
* **403** `forbidden`: a valid token without a scope the operation needs (`needed_scopes` names them).
* **503** `tokens_unavailable`: the server cannot read its tokens file; wait `Retry-After` seconds.
"""


def build_document(app: Flask) -> Schema:
    """The document; with TOKENS_FILE set, the operations that need a token say so (`security`, 401)."""
    stages = app.extensions["uniquerand"]["stages"]
    tokens = bool(app.config["TOKENS_FILE"])
    paths: dict[str, Schema] = {
        "/": _path(_operation("index", "The stages this server runs, with links.", "service", _ok(_INDEX))),
        "/healthz": _path(
            _operation("healthz", "Health check; touches no store.", "service", _ok(_HEALTH), errors=False)
        ),
        "/openapi.json": _path(
            _operation("openapi", "This document.", "service", _ok({"type": "object"}), errors=False)
        ),
        "/docs": _path(_operation("docs", "This document as a page.", "service", _html_ok(), errors=False)),
        "/readyz": _path(_readyz_operation()),
        "/metrics": _path(_metrics_operation(app.config["METRICS_REQUIRE_TOKEN"])),
    }
    for stage in stages:
        stats = _operation(f"{stage.name}_stats", f"Counters of /{stage.name}.", stage.name, _ok(_stats(stage.name)))
        draw = _random_operation(stage, app.config)
        paths[f"/{stage.name}/random"] = _path(_needs_token(keyed(draw) if stage.replies else draw, tokens))
        paths[f"/{stage.name}/stats"] = _path(_needs_token(stats, tokens))
        if stage.named_spaces is not None:
            helpers = SimpleNamespace(
                operation=_operation, ok=_ok, path=_path, error_response=error_response,
                needs_token=lambda operation: _needs_token(operation, tokens), keyed=keyed,
                signed=stage.signer is not None,
            )  # fmt: skip
            paths |= spaces_paths(stage.name, app.config["MAX_COUNT"], helpers)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "uniquerand",
            "version": API_VERSION,
            "description": DESCRIPTION + (TOKENS_DESCRIPTION if tokens else ""),
        },
        "tags": [
            {"name": "service", "description": "The server itself."},
            *({"name": stage.name, "description": stage.description} for stage in stages),
        ],
        "paths": paths,
        "components": build_components(tokens),
    }


def _needs_token(operation: Schema, tokens: bool, scoped: bool = True) -> Schema:
    if tokens:
        operation["security"] = [{BEARER_SCHEME: []}]
        operation["responses"]["401"] = {"$ref": "#/components/responses/Unauthorized"}
        if scoped:
            operation["responses"]["403"] = {"$ref": "#/components/responses/Forbidden"}
        operation["responses"]["503"] = {"$ref": "#/components/responses/Unavailable"}
    return operation


def _readyz_operation() -> Schema:
    operation = _operation(
        "readyz",
        "Whether every stage can serve now (for a load balancer); asks each store, issues nothing.",
        "service",
        _ok(closed_object({"status": {"const": "ready"}}, "status")),
        errors=False,
    )
    operation["responses"]["503"] = error_response(
        "Not every stage can serve now: `stages` names each one that cannot and why, `codes` the error code it "
        "would answer with (`store_key_invalid`: this host lacks the database's /v5 key). Retry after `Retry-After`.",
        "NotReady",
        {"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
    )
    return operation


def _metrics_operation(needs_token: bool) -> Schema:
    ok = {
        "description": "Prometheus's text format: every worker's counts added up, and the stores' levels.",
        "headers": NO_STORE,
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    operation = _operation("metrics", "Metrics for Prometheus.", "service", ok, errors=False)
    return _needs_token(operation, needs_token, scoped=False)


def _path(get: Schema, put: Schema | None = None) -> Schema:
    tag = get["tags"][0]
    options = {
        "operationId": f"{get['operationId']}_options",
        "summary": "The methods this path accepts; touches no store.",
        "tags": [tag],
        "responses": {
            "200": {
                "description": "The methods this path accepts, in the `Allow` header and the body.",
                "headers": {"Allow": {"$ref": "#/components/headers/Allow"}, **NO_STORE},
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Allowed"}}},
            }
        },
    }
    return {"get": get, "options": options} | ({"put": put} if put else {})


def _operation(
    operation_id: str, summary: str, tag: str, ok: Schema, parameters: list | None = None, errors: bool = True
) -> Schema:
    responses = {"200": ok}
    if errors:
        responses |= {"500": {"$ref": "#/components/responses/ServerError"}}
        responses |= {"503": {"$ref": "#/components/responses/Unavailable"}}
    operation = {"operationId": operation_id, "summary": summary, "tags": [tag], "responses": responses}
    if parameters:
        operation["parameters"] = parameters
    return operation


def _random_operation(stage, config: dict) -> Schema:
    number = {
        "description": "An int for `type=int`, a float on the grid of 10^-FLOAT_DECIMALS for `type=float`.",
        "anyOf": [
            {"type": "integer", "minimum": config["INT_MIN"], "maximum": config["INT_MAX"]},
            {"type": "number", "minimum": config["FLOAT_MIN"], "exclusiveMaximum": config["FLOAT_MAX"]},
        ],
    }
    single = closed_object({"number": number, **stage.extra_response_properties}, "number")
    parameters = [_LENIENT_TYPE if stage.lenient_type else _STRICT_TYPE]
    body = single
    if stage.accepts_count:
        maximum = config["MAX_COUNT"]
        numbers = {"type": "array", "items": number, "minItems": 1, "maxItems": maximum, "uniqueItems": True}
        batch = closed_object({"numbers": numbers, **stage.extra_batch_properties}, "numbers")
        body = {"oneOf": [single, batch]}
        parameters.append(
            {
                "name": "count",
                "in": "query",
                "required": False,
                "description": 'Ask for a batch of this many distinct numbers, answered as `{"numbers": [...]}`'
                ' and recorded in one write. Without it, one number as `{"number": n}`. At most once.',
                "schema": {"type": "integer", "minimum": 1, "maximum": maximum},
            }
        )
    ok = _ok(body, "Unique numbers, durably recorded before this response was sent.")
    operation = _operation(
        f"{stage.name}_random", f"Unique random numbers from /{stage.name}.", stage.name, ok, parameters
    )
    if not stage.lenient_type:
        operation["responses"]["422"] = {"$ref": "#/components/responses/InvalidParameter"}
    return operation


def _ok(schema: Schema, description: str = "OK") -> Schema:
    return {"description": description, "headers": NO_STORE, "content": {"application/json": {"schema": schema}}}


def _html_ok() -> Schema:
    # The one page of the API: its scripts and styles are served by the app itself, nothing from the internet.
    return {"description": "An HTML page that renders /openapi.json.", "content": {"text/html": {"schema": {}}}}


def _stats(name: str) -> Schema:
    counters = {
        "type": "object",
        "description": "Store-specific counters may follow the three every store reports.",
        "required": ["issued", "space_size", "remaining"],
        "properties": {key: {"type": "integer", "minimum": 0} for key in ("issued", "space_size", "remaining")},
    }
    types = {"type": "object", "required": list(KINDS), "properties": dict.fromkeys(KINDS, counters)}
    return closed_object({"stage": {"const": name}, "types": types}, "stage") | {"required": ["stage", "types"]}


_LENIENT_TYPE: Schema = {
    "name": "type",
    "in": "query",
    "required": False,
    "description": "`float` in any case means float; anything else, or none, means int (the simple server's "
    "rule: never a 422). When repeated, the first one counts.",
    "schema": {"type": "string"},
}

_STRICT_TYPE: Schema = {
    "name": "type",
    "in": "query",
    "required": False,
    "description": "`int` (the default) or `float`, in any case; anything else is a 422. At most once.",
    "schema": {"type": "string", "pattern": "^([iI][nN][tT]|[fF][lL][oO][aA][tT])$", "default": "int"},
    "examples": {"int": {"value": "int"}, "float": {"value": "float"}},
}

_INDEX: Schema = {
    "type": "object",
    "required": ["service", "stages", "health"],
    "properties": {
        "service": {"const": "uniquerand"},
        "health": {"type": "string"},
        "stages": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["prefix", "description", "store", "links"],
                "properties": {
                    "prefix": {"type": "string"},
                    "description": {"type": "string"},
                    "store": {"type": "string"},
                    "links": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
        },
    },
}

_HEALTH: Schema = closed_object({"status": {"const": "ok"}}, "status")
