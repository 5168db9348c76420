"""The HTTP side of /v5's named spaces: create one (`PUT /v5/spaces/{name}`), read it, list them, and draw from
one with /v5/random's guarantees and codes. Built only for a stage whose store keeps named spaces."""

from __future__ import annotations

import json

from flask import Blueprint, current_app, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from uniquerand.blueprints.access import BearerGuard
from uniquerand.blueprints.common import JSON_MIMETYPE, batch_count, bounded_param, numbers_response, single_param
from uniquerand.blueprints.idempotency import answered_once, idempotency_key
from uniquerand.errors import InvalidParameterError
from uniquerand.numbers import NumberSpace
from uniquerand.scopes import ADMIN_SCOPE, DRAW_ANY
from uniquerand.signing import SAFE_INTEGER, DrawSigner
from uniquerand.storage.draws import DrawNotFoundError
from uniquerand.storage.replies import ReplyStore
from uniquerand.storage.spaces import (
    PAGE_LIMIT,
    NamedSpaces,
    SpaceDefinitionError,
    SpaceRecord,
    is_space_name,
    space_from_definition,
)

# A definition is a few short fields; a larger body is no definition.
MAX_BODY = 4096
DEFINITION_FIELDS = ("type", "min", "max", "decimals")


def spaces_blueprint(
    stage_name: str,
    spaces: NamedSpaces,
    guard: BearerGuard | None = None,
    replies: ReplyStore | None = None,
    signer: DrawSigner | None = None,
) -> Blueprint:
    bp = Blueprint(f"{stage_name}_spaces", __name__, url_prefix=f"/{stage_name}/spaces")

    @bp.route("/<name>", methods=["GET", "PUT"])
    def space(name: str):
        # One rule for both, so that OPTIONS and 405's `Allow` name both.
        return create(name) if request.method == "PUT" else describe(name)

    def create(name: str):
        space = _definition_of_body()
        try:
            record, created = spaces.create(name, space)
        except SpaceDefinitionError as err:
            raise InvalidParameterError(err.field, str(err)) from None
        return jsonify(space_definition(record)), 201 if created else 200

    def describe(name: str):
        record, counts = spaces.stats(name)
        return jsonify(
            {
                **space_definition(record),
                "issued": counts["issued"],
                "remaining": counts["remaining"],
                "space_size": counts["space_size"],
            }
        )

    @bp.get("")
    def list_spaces():
        after = single_param(request.args, "after")
        if after and not is_space_name(after):
            raise InvalidParameterError("after", "Invalid 'after': it must be a space's name (the `next` of a page).")
        limit = bounded_param(request.args, "limit", PAGE_LIMIT) or PAGE_LIMIT
        records = spaces.page(after or "", limit + 1)
        page = records[:limit]
        more = len(records) > limit
        return jsonify({"spaces": [space_definition(r) for r in page], "next": page[-1].name if more else None})

    @bp.get("/<name>/random")
    def draw(name: str):
        if replies is not None and (key := idempotency_key()) is not None:
            return answered_once(replies, key, lambda: issue(name))
        return issue(name)

    def issue(name: str):
        count = batch_count(request.args)
        if signer is not None and _signed(request.args):
            return signed_draw(name, count or 1)
        space, issued = spaces.issue(name, count or 1)
        return numbers_response(space, issued.codes, count)

    def signed_draw(name: str, count: int):
        # Checked before anything is issued; from the cache the draw itself uses (no read per draw).
        record = spaces.record(name)
        low, high = _bounds(record.space)
        if record.space.kind == "int" and max(abs(low), abs(high)) > SAFE_INTEGER:
            raise InvalidParameterError(
                "signed", "This space's numbers go past 2^53 - 1, which signed results (RFC 8785 JSON) cannot carry."
            )
        space, issued = spaces.issue(name, count)
        numbers = [space.to_json_value(code) for code in issued.codes]
        fields = {"type": space.kind, "min": low, "max": high, "numbers": numbers}
        return current_app.response_class(signer.sign_draw(name, fields), mimetype=JSON_MIMETYPE)

    @bp.get("/<name>/draws/<serial>")
    def signed_record(name: str, serial: str):
        spaces.get(name)
        # Any text is a path here (OPTIONS answers it too); only a serial names a draw.
        number = int(serial) if serial.isascii() and serial.isdigit() and len(serial) <= 20 else 0
        if signer is None or number == 0:
            raise DrawNotFoundError(f"The space {name!r} has no signed draw {serial!r}.")
        return current_app.response_class(signer.store.get(name, number), mimetype=JSON_MIMETYPE)

    if guard is not None:

        @bp.before_request
        def require_token():
            # Before the view: a refused request parses nothing and touches no store.
            g.client_name = guard.client(*_scopes_for(request.endpoint.rpartition(".")[2], request.view_args or {}))

    return bp


def _scopes_for(view: str, args: dict) -> tuple[str, ...]:
    """The scopes of which a token needs one for the view: creating needs `spaces:admin`; reading a space or
    drawing from it needs `draw:NAME` (which `draw:*` covers); an admin may also read any space and the list."""
    name = args.get("name", "")
    if view == "space" and request.method == "PUT":
        return (ADMIN_SCOPE,)
    if not is_space_name(name):
        # No space has this name (the view answers 404), and it must not reach the challenge header: a path's
        # %0A would split it.
        return (DRAW_ANY,) if view in ("draw", "signed_record") else (DRAW_ANY, ADMIN_SCOPE)
    if view in ("draw", "signed_record"):
        return (f"draw:{name}",)
    if view == "space":
        return (f"draw:{name}", ADMIN_SCOPE)
    return (DRAW_ANY, ADMIN_SCOPE)


def _bounds(space: NumberSpace) -> tuple[int | float, int | float]:
    """A space's `min` and `max` as the API shows them: a float's as [min, max), as it was defined."""
    if space.kind == "int":
        return space.low, space.high
    return space.to_json_value(space.low), space.to_json_value(space.high + 1)


def _signed(args) -> bool:
    value = single_param(args, "signed")
    if value not in (None, "true", "false"):
        raise InvalidParameterError("signed", "Invalid 'signed': it must be true or false.", allowed=["true", "false"])
    return value == "true"


def space_definition(record: SpaceRecord) -> dict:
    """A space as the API shows it."""
    space = record.space
    low, high = _bounds(space)
    body: dict = {"name": record.name, "type": space.kind, "min": low, "max": high}
    if space.kind == "float":
        body["decimals"] = space.decimals
    body["created"] = record.created
    return body


def _definition_of_body():
    # One byte past MAX_BODY is read, never the rest, whether the body has a length or comes in chunks.
    data = request.stream.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise RequestEntityTooLarge(f"A space's definition is at most {MAX_BODY} bytes.")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: 4 KiB of `[` nests deeper than the parser goes
        body = None
    if not isinstance(body, dict):
        raise InvalidParameterError(
            "body", 'The body must be a JSON object such as {"type":"int","min":0,"max":99999999}.'
        )
    unknown = sorted(set(body) - set(DEFINITION_FIELDS))
    if unknown:
        raise InvalidParameterError(
            unknown[0], f"Unknown field {unknown[0]!r}: a definition has {', '.join(DEFINITION_FIELDS)}."
        )
    for field in ("type", "min", "max"):
        if field not in body:
            raise InvalidParameterError(field, f"The definition lacks {field!r}.")
    try:
        return space_from_definition(body["type"], body["min"], body["max"], body.get("decimals"))
    except SpaceDefinitionError as err:
        raise InvalidParameterError(err.field, str(err)) from None


def signing_keys_blueprint(stage_name: str, signer: DrawSigner) -> Blueprint:
    """`GET /{stage}/signing-keys`: the JWK Set a signed result is checked against. Public, with or without
    tokens: a third party who checks a result needs no access to the service."""
    bp = Blueprint(f"{stage_name}_signing_keys", __name__, url_prefix=f"/{stage_name}")

    @bp.get("/signing-keys")
    def signing_keys():
        return jsonify(signer.key_set())

    return bp
