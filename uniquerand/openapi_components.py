"""The reusable parts of the OpenAPI document: every error body (its codes from `uniquerand.errors`), the
shared headers and responses, and the bearer scheme of a server with tokens."""

from __future__ import annotations

from typing import Any

from uniquerand.errors import STORE_ERROR_RESPONSES
from uniquerand.openapi_draws import add_components

Schema = dict[str, Any]
BEARER_SCHEME = "bearerAuth"

NO_STORE: Schema = {"Cache-Control": {"$ref": "#/components/headers/Cache-Control"}}


def closed_object(properties: Schema, required: str) -> Schema:
    return {"type": "object", "required": [required], "properties": properties, "additionalProperties": False}


def error_schema(codes: list[str], extra: Schema | None = None) -> Schema:
    properties = {"error": {"type": "string", "minLength": 1}, "code": {"enum": codes}, **(extra or {})}
    return {"type": "object", "required": ["error", "code"], "properties": properties, "additionalProperties": False}


def error_response(description: str, schema: str, headers: Schema | None = None) -> Schema:
    return {
        "description": description,
        "headers": {**(headers or {}), **NO_STORE},
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _codes(status: int, retryable: bool | None = None) -> list[str]:
    return [code for s, code, retry in STORE_ERROR_RESPONSES.values() if s == status and retryable in (None, retry)]


def build_components(tokens: bool) -> Schema:
    # The guard's own 503 (uniquerand.blueprints.access), on a server with tokens.
    token_codes = ["tokens_unavailable"] if tokens else []
    unavailable = _codes(503) + token_codes
    retry_codes = ", ".join(f"`{code}`" for code in _codes(503, True) + token_codes)
    final_codes = ", ".join(f"`{code}`" for code in _codes(503, False))
    count = {"type": "integer", "minimum": 0}
    components = {
        "schemas": {
            "NotFound": error_schema(["not_found"]),
            "MethodNotAllowed": error_schema(["method_not_allowed"]),
            "InvalidParameter": error_schema(
                ["invalid_parameter"],
                {
                    "parameter": {"type": "string"},
                    "allowed": {"type": "array", "items": {"type": "string"}},
                    "minimum": {"type": "integer"},
                    "maximum": {"type": "integer"},
                },
            ),
            "ServerError": error_schema([*_codes(500), "store_error", "internal_error"]),
            "Unavailable": error_schema(unavailable, {"requested": count, "remaining": count}),
            "NotReady": error_schema(
                ["not_ready"],
                {
                    "stages": {"type": "object", "additionalProperties": {"type": "string"}},
                    "codes": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            ),
            "SpaceNotFound": error_schema(["space_not_found"]),
            "SpaceConflict": error_schema(["space_conflict"]),
            "TooLarge": error_schema(["request_entity_too_large"]),
            "Allowed": closed_object({"allow": {"type": "array", "items": {"type": "string"}}}, "allow"),
        },
        "headers": {
            "Allow": {
                "description": "The methods the path accepts.",
                "schema": {"type": "string", "pattern": "^[A-Z]+(, [A-Z]+)*$"},
            },
            "Retry-After": {
                "description": f"Seconds to wait before retrying; sent with {retry_codes}.",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            },
            "Cache-Control": {
                "description": "`no-store`: a cached number would be served twice.",
                "schema": {"const": "no-store"},
            },
        },
        "responses": {
            "NotFound": error_response("Unknown path.", "NotFound"),
            "MethodNotAllowed": error_response(
                "The path does not accept this method; `Allow` lists those it does.",
                "MethodNotAllowed",
                {"Allow": {"$ref": "#/components/headers/Allow"}},
            ),
            "InvalidParameter": error_response(
                "`type` or `count` has a value the stage does not accept, or is repeated. The body names the "
                "`parameter` and what it allows (`allowed`, or `minimum` and `maximum`).",
                "InvalidParameter",
            ),
            "ServerError": error_response(
                "The store cannot be read as what it should be (it was left untouched), or an unexpected fault "
                "(logged; never in the body). Tell an operator.",
                "ServerError",
            ),
            "Unavailable": error_response(
                f"Nothing was issued. With {retry_codes} a retry may succeed: wait `Retry-After` seconds. "
                f"With {final_codes} it will not; `insufficient_remaining` says how many numbers `remaining`.",
                "Unavailable",
                {"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
            ),
        },
    }
    add_components(components, error_schema, error_response)
    if tokens:
        _add_bearer_components(components)
    return components


def _add_bearer_components(components: Schema) -> None:
    components["securitySchemes"] = {
        BEARER_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "An access token from `flask tokens create NAME`, sent as `Authorization: Bearer <token>`.",
        }
    }
    components["schemas"]["Unauthorized"] = error_schema(["unauthorized"])
    needed = {"needed_scopes": {"type": "array", "items": {"type": "string"}, "minItems": 1}}
    components["schemas"]["Forbidden"] = error_schema(["forbidden"], needed)
    components["responses"]["Forbidden"] = error_response(
        "A valid token without a scope this needs. Nothing was issued.",
        "Forbidden",
        {"WWW-Authenticate": {"description": 'Bearer with `error="insufficient_scope"`', "schema": {"type": "string"}}},
    )
    components["headers"]["WWW-Authenticate"] = {
        "description": 'The Bearer challenge; `error="invalid_token"` when a token was sent and refused.',
        "required": True,
        "schema": {"type": "string", "pattern": '^Bearer realm="uniquerand"(, error="invalid_token")?$'},
    }
    components["responses"]["Unauthorized"] = error_response(
        "No access token, a malformed one, or one that is wrong or revoked. Nothing was issued.",
        "Unauthorized",
        {"WWW-Authenticate": {"$ref": "#/components/headers/WWW-Authenticate"}},
    )
