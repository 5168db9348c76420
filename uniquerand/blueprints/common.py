"""Request parsing and response shapes shared by the stage blueprints."""

from __future__ import annotations

from flask import current_app, jsonify, request

from uniquerand.errors import InvalidParameterError
from uniquerand.numbers import KINDS, NumberKind


def store(name: str):
    """The store of the named stage, built by `create_app`."""
    return current_app.extensions["uniquerand"]["stores"][name]


def space(kind: NumberKind):
    return current_app.extensions["uniquerand"]["spaces"][kind]


def single_param(name: str) -> str | None:
    values = request.args.getlist(name)
    if len(values) > 1:
        raise InvalidParameterError(name, f"'{name}' may be given at most once.")
    return values[0] if values else None


def lenient_type() -> NumberKind:
    """The simple server's documented rule: `type=float` (any case) means float, anything else int."""
    value = request.args.get("type", "")
    return "float" if value.lower() == "float" else "int"


def strict_type() -> NumberKind:
    """`type` must be `int` or `float` (any case); the default is `int`."""
    value = single_param("type")
    if value is None:
        return "int"
    kind = value.lower()
    if kind not in KINDS:
        raise InvalidParameterError(
            "type", f"Invalid 'type': it must be one of {', '.join(KINDS)}.", allowed=list(KINDS)
        )
    return kind


def batch_count() -> int | None:
    """`count` as an integer in 1..MAX_COUNT, or None when absent (a single number is asked for)."""
    value = single_param("count")
    if value is None:
        return None
    maximum = current_app.config["MAX_COUNT"]
    # The length bound keeps int() from refusing (ValueError, a 500) a string of over 4300 digits.
    if not (value.isascii() and value.isdigit() and len(value) <= 20) or not 1 <= int(value) <= maximum:
        raise InvalidParameterError(
            "count", f"Invalid 'count': it must be an integer from 1 to {maximum}.", minimum=1, maximum=maximum
        )
    return int(value)


def numbers_response(kind: NumberKind, codes: list[int], batch: bool = False, **extra):
    """`{"number": n}` for a single number, `{"numbers": [...]}` for a batch."""
    number_space = space(kind)
    values = [number_space.to_json_value(code) for code in codes]
    body = {"numbers": values} if batch else {"number": values[0]}
    return jsonify({**body, **extra})


def stats_response(name: str):
    return jsonify({"stage": name, "types": store(name).stats()})
