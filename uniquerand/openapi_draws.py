"""The OpenAPI parts of /v5's verifiable draws: the `Idempotency-Key` header of every /v5 draw, its replay header
and its two refusals (a key reused for another request, a request with the key still in progress); a space's
signed draws, kept under their serials, and the key set they are checked with."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

KEY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Makes the draw safe to retry: the first request with a key issues, and its answer is recorded "
    "before it is sent; the same request (path and query) with the same key within IDEMPOTENCY_TTL seconds gets "
    "that answer again, byte for byte, with `Idempotent-Replayed: true`, and issues nothing. Keys are per client "
    "(per token, with tokens). 1 to 255 visible ASCII characters, such as a UUID.",
    "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
}
REPLAYED_HEADER = {
    "description": "`true`: this is the recorded answer of an earlier request with the same Idempotency-Key.",
    "schema": {"const": "true"},
}


def keyed(operation: Schema) -> Schema:
    """A draw that takes an Idempotency-Key: the header, the replay header on 200, 409 and the reused key's 422."""
    operation.setdefault("parameters", []).append(KEY_PARAMETER)
    ok = operation["responses"]["200"]
    ok["headers"] = {**ok.get("headers", {}), "Idempotent-Replayed": {"$ref": "#/components/headers/Replayed"}}
    operation["responses"]["409"] = {"$ref": "#/components/responses/RequestInProgress"}
    operation["responses"]["422"] = {"$ref": "#/components/responses/InvalidOrReusedKey"}
    return operation


def add_components(components: Schema, error: Any, error_response: Any) -> None:
    """`error` and `error_response`: the document's builders of an error schema and of a response of one."""
    components["schemas"]["RequestInProgress"] = error(["request_in_progress"])
    components["schemas"]["DrawNotFound"] = error(["space_not_found", "draw_not_found"])
    components["schemas"]["InvalidOrReusedKey"] = {
        "oneOf": [{"$ref": "#/components/schemas/InvalidParameter"}, error(["idempotency_key_reused"])]
    }
    components["headers"]["Replayed"] = REPLAYED_HEADER
    components["responses"]["RequestInProgress"] = error_response(
        "A request with this Idempotency-Key is still being answered: retry after `Retry-After` seconds to get its "
        "answer. Nothing was issued for this one.",
        "RequestInProgress",
        {"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
    )
    components["responses"]["InvalidOrReusedKey"] = error_response(
        "A parameter or the Idempotency-Key header is invalid (`invalid_parameter`), or the key was used for "
        "another request (`idempotency_key_reused`). Nothing was issued.",
        "InvalidOrReusedKey",
    )


SIGNED_PARAMETER = {
    "name": "signed",
    "in": "query",
    "required": False,
    "description": "`true`: answer a signed result (Ed25519 over its RFC 8785 canonical JSON, without `signature`) "
    "under the space's next serial (1, 2, 3, ... without gaps), recorded and fetched again at "
    "`draws/{serial}`. Check it with `flask verify` against `/v5/signing-keys`. Int spaces past 2^53 - 1: 422.",
    "schema": {"enum": ["true", "false"]},
}
SIGNED_RESULT: Schema = {
    "type": "object",
    "required": ["space", "type", "min", "max", "numbers", "serial", "issued_at", "key_id", "signature"],
    "properties": {
        "space": {"type": "string"},
        "type": {"enum": ["int", "float"]},
        "min": {"type": "number"},
        "max": {"type": "number"},
        "numbers": {"type": "array", "items": {"type": "number"}, "minItems": 1, "uniqueItems": True},
        "serial": {"type": "integer", "minimum": 1},
        "issued_at": {"type": "string", "format": "date-time"},
        "key_id": {"type": "string", "description": "The `kid` of the signing key in /v5/signing-keys."},
        "signature": {"type": "string", "description": "Ed25519, base64url without padding."},
    },
    "additionalProperties": False,
}
JWK_SET: Schema = {
    "type": "object",
    "required": ["keys"],
    "properties": {
        "keys": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["kty", "crv", "x", "kid"],
                "properties": {
                    "kty": {"const": "OKP"},
                    "crv": {"const": "Ed25519"},
                    "x": {"type": "string"},
                    "kid": {"type": "string"},
                    "use": {"const": "sig"},
                    "alg": {"const": "EdDSA"},
                },
                "additionalProperties": False,
            },
        }
    },
    "additionalProperties": False,
}


def signed_paths(stage: str, draw: Schema, name_parameter: Schema, build: Any) -> dict[str, Schema]:
    """Adds `signed` to the space's draw (`draw`); the paths of a signed draw kept and of the key set."""
    draw["parameters"].append(SIGNED_PARAMETER)
    ok = draw["responses"]["200"]["content"]["application/json"]["schema"]
    ok["oneOf"].append(SIGNED_RESULT)
    serial = {"name": "serial", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
    kept = build.operation(
        f"{stage}_space_draw",
        "A signed draw again, byte for byte as it was answered.",
        stage,
        build.ok(SIGNED_RESULT, "The signed result recorded under this serial."),
        [name_parameter, serial],
    )
    kept["responses"]["404"] = build.error_response(
        "No space of that name (`space_not_found`), or no signed draw of that serial yet (`draw_not_found`).",
        "DrawNotFound",
    )
    keys = build.operation(
        f"{stage}_signing_keys",
        "The public keys signed draws are checked with (a JWK Set), every one that ever signed; no token needed.",
        stage,
        build.ok(JWK_SET),
    )
    kept_path = build.path(build.needs_token(kept))
    # OPTIONS answers any name and serial.
    kept_path["options"]["parameters"] = [
        name_parameter | {"schema": {"type": "string"}},
        serial | {"schema": {"type": "string"}},
    ]
    return {f"/{stage}/spaces/{{name}}/draws/{{serial}}": kept_path, f"/{stage}/signing-keys": build.path(keys)}
