"""The OpenAPI parts of /v5's verifiable draws: the `Idempotency-Key` header of every /v5 draw, its replay header
and its two refusals (a key reused for another request, a request with the key still in progress)."""

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
