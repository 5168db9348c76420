"""The OpenAPI paths of /v5's named spaces (`blueprints.spaces`), joined to the document by `openapi`."""

from __future__ import annotations

from typing import Any

from uniquerand.openapi_draws import signed_paths
from uniquerand.storage.spaces import MAX_DECIMALS, NAME_PATTERN, PAGE_LIMIT

Schema = dict[str, Any]

_NAME: Schema = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "The space's name: 1 to 63 of a-z, 0-9, `_`, `.`, `-`, starting with a letter or digit.",
    "schema": {"type": "string", "pattern": NAME_PATTERN},
}
_BOUND: Schema = {
    "type": "number",
    "description": "An int space: its least and greatest int. A float space: [min, max).",
}
DEFINITION: Schema = {
    "type": "object",
    "required": ["type", "min", "max"],
    "properties": {
        "type": {"enum": ["int", "float"]},
        "min": _BOUND,
        "max": _BOUND,
        "decimals": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_DECIMALS,
            "description": "Float spaces only: the grid of 10^-decimals (default 6).",
        },
    },
    "additionalProperties": False,
}
SPACE: Schema = {
    "type": "object",
    "required": ["name", "type", "min", "max", "created"],
    "properties": {
        "name": {"type": "string"},
        "type": {"enum": ["int", "float"]},
        "min": {"type": "number"},
        "max": {"type": "number"},
        "decimals": {"type": "integer"},
        "created": {"type": "string", "format": "date-time"},
    },
    "additionalProperties": False,
}
COUNTS = ("issued", "remaining", "space_size")
SPACE_WITH_COUNTS: Schema = SPACE | {
    "required": [*SPACE["required"], *COUNTS],
    "properties": SPACE["properties"] | {key: {"type": "integer", "minimum": 0} for key in COUNTS},
}


def spaces_paths(stage: str, max_count: int, build) -> dict[str, Schema]:
    """`build`: the document's helpers (operation, ok, path, error_response, needs_token), so that these
    operations read as the stages' do."""
    tag = stage
    not_found = build.error_response("No space of that name was ever created.", "SpaceNotFound")
    invalid = {"$ref": "#/components/responses/InvalidParameter"}
    created = build.ok(SPACE, "The space was created.")
    put = build.operation(
        f"{stage}_space_create",
        "Create a named space (the same definition again: 200, nothing changed).",
        tag,
        build.ok(SPACE, "The space exists with this definition; nothing was changed."),
        [_NAME],
    )
    put["requestBody"] = {"required": True, "content": {"application/json": {"schema": DEFINITION}}}
    put["responses"] |= {
        "201": created,
        "409": build.error_response("A space of that name exists with another definition.", "SpaceConflict"),
        "413": build.error_response("The body is larger than a definition may be.", "TooLarge"),
        "422": invalid,
    }
    describe = build.operation(
        f"{stage}_space", "A space's definition and counts.", tag, build.ok(SPACE_WITH_COUNTS), [_NAME]
    )
    describe["responses"]["404"] = not_found
    page = {
        "type": "object",
        "required": ["spaces", "next"],
        "properties": {"spaces": {"type": "array", "items": SPACE}, "next": {"type": ["string", "null"]}},
        "additionalProperties": False,
    }
    listing = build.operation(
        f"{stage}_spaces",
        "The spaces in name order, a page at a time (`next`: the `after` of the next page).",
        tag,
        build.ok(page),
        [
            {
                "name": "after",
                "in": "query",
                "required": False,
                "description": "List the names that sort after this one (the previous page's `next`); empty: from "
                "the first.",
                "schema": {"type": "string", "pattern": "^(" + NAME_PATTERN.strip("^$") + ")?$"},
            },
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": PAGE_LIMIT},
            },
        ],
    )
    listing["responses"]["422"] = invalid
    number = {"type": "number"}
    single = {"type": "object", "required": ["number"], "properties": {"number": number}, "additionalProperties": False}
    numbers = {"type": "array", "items": number, "minItems": 1, "maxItems": max_count, "uniqueItems": True}
    batch = {
        "type": "object",
        "required": ["numbers"],
        "properties": {"numbers": numbers},
        "additionalProperties": False,
    }
    count = {
        "name": "count",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": max_count},
    }
    draw = build.operation(
        f"{stage}_space_random",
        "Unique random numbers from a named space, as /v5/random gives them.",
        tag,
        build.ok({"oneOf": [single, batch]}, "Unique numbers, durably recorded before this response was sent."),
        [_NAME, count],
    )
    draw["responses"] |= {"404": not_found}
    build.keyed(draw)
    signed = signed_paths(stage, draw, _NAME, build) if build.signed else {}
    named = {
        f"/{stage}/spaces/{{name}}": build.path(build.needs_token(describe), put=build.needs_token(put)),
        f"/{stage}/spaces/{{name}}/random": build.path(build.needs_token(draw)),
    }
    for item in named.values():
        # OPTIONS answers any name, a space's or not.
        item["options"]["parameters"] = [_NAME | {"schema": {"type": "string"}}]
    return {f"/{stage}/spaces": build.path(build.needs_token(listing)), **named, **signed}
