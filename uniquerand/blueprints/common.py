"""Request parsing and response shapes shared by the stage blueprints."""

from __future__ import annotations

from collections.abc import Callable

from flask import current_app, jsonify, request
from werkzeug.datastructures import MultiDict

from uniquerand.errors import InvalidParameterError
from uniquerand.numbers import KINDS, NumberKind, NumberSpace

JSON_MIMETYPE = "application/json"


# The most common query strings, answered without parsing them into a MultiDict (a quarter of a fast
# stage's own cost), with the same answer under either rule for `type`; any other form, `TYPE=Int` or
# `type=int&count=5` say, takes the general path.
_SINGLE_NUMBER_QUERIES: dict[bytes, tuple[NumberKind, None]] = {
    b"": ("int", None),
    b"type=int": ("int", None),
    b"type=float": ("float", None),
}
RandomRequest = Callable[[], tuple[NumberKind, int | None]]


def random_request_reader(lenient_type: bool, accepts_count: bool) -> RandomRequest:
    """What a stage reads from a /random request: the `type` (default `int`) and `count` (None: a single
    number). `lenient_type`: the simple server's rule, `type=float` (any case) means float and anything else
    int, never a 422; else `type` must be `int` or `float`. Without `accepts_count`, `count` is ignored."""
    read_type = _lenient_type if lenient_type else _strict_type

    def read() -> tuple[NumberKind, int | None]:
        common = _SINGLE_NUMBER_QUERIES.get(request.query_string)
        if common is not None:
            return common
        args = request.args
        return read_type(args), batch_count(args) if accepts_count else None

    return read


def _lenient_type(args: MultiDict) -> NumberKind:
    return "float" if args.get("type", "").lower() == "float" else "int"


def single_param(args: MultiDict, name: str) -> str | None:
    values = args.getlist(name)
    if len(values) > 1:
        raise InvalidParameterError(name, f"'{name}' may be given at most once.")
    return values[0] if values else None


def _strict_type(args: MultiDict) -> NumberKind:
    """`type` must be `int` or `float` (any case)."""
    value = single_param(args, "type")
    if value is None:
        return "int"
    kind = value.lower()
    if kind not in KINDS:
        raise InvalidParameterError(
            "type", f"Invalid 'type': it must be one of {', '.join(KINDS)}.", allowed=list(KINDS)
        )
    return kind


def batch_count(args: MultiDict) -> int | None:
    """`count` as an integer in 1..MAX_COUNT, or None when absent."""
    return bounded_param(args, "count", current_app.config["MAX_COUNT"])


def bounded_param(args: MultiDict, name: str, maximum: int) -> int | None:
    """Query parameter `name` as an integer in 1..maximum, or None when absent."""
    value = single_param(args, name)
    if value is None:
        return None
    # The length bound keeps int() from refusing (ValueError, a 500) a string of over 4300 digits.
    if not (value.isascii() and value.isdigit() and len(value) <= 20) or not 1 <= int(value) <= maximum:
        raise InvalidParameterError(
            name, f"Invalid '{name}': it must be an integer from 1 to {maximum}.", minimum=1, maximum=maximum
        )
    return int(value)


def numbers_response(space: NumberSpace, codes: list[int], count: int | None = None, **extra):
    """`{"number": n}` for a single number (`count` None), `{"numbers": [...]}` for a batch, with `extra`'s
    fields. `space` is the store's own (`store.spaces[kind]`)."""
    to_json_value = space.to_json_value
    if count is not None and not extra and space.kind == "int":
        # An int's digits are its JSON; a batch of 1000 spends more in jsonify's encoder than in its draw.
        return json_text_response(f'{{"numbers":[{",".join(map(str, codes))}]}}\n')
    if count is not None:
        return jsonify({"numbers": [to_json_value(code) for code in codes], **extra})
    if extra:  # /v4's shard names: jsonify encodes strings
        return jsonify({"number": to_json_value(codes[0]), **extra})
    # A number's repr is its JSON (an int's digits, a float's shortest round-trip form).
    return json_text_response(f'{{"number":{to_json_value(codes[0])!r}}}\n')


def json_text_response(text: str):
    """A response of JSON the caller wrote: the bytes and headers jsonify gives for the same object outside
    debug mode (compact), without its encoder and provider, which cost more than the rest of the write. For
    the hot paths: /vN/random's single numbers and the benchmark's baseline, `/healthz`, so that neither
    pays for a cost the other does not (tests/test_app.py compares them with jsonify)."""
    return current_app.response_class(text, mimetype=JSON_MIMETYPE)
