"""What an access token may do: `spaces:admin` (create named spaces), `draw:NAME` (draw from the named space
NAME), `draw:*` (draw from every space and every stage). Plain strings, so that the tokens file, the CLI and
the blueprints share one spelling."""

from __future__ import annotations

import re

from uniquerand.storage.spaces import NAME_PATTERN as SPACE_NAME_PATTERN

ADMIN_SCOPE = "spaces:admin"
DRAW_ANY = "draw:*"
SCOPE_PATTERN = re.compile(rf"{re.escape(ADMIN_SCOPE)}|draw:\*|draw:{SPACE_NAME_PATTERN.strip('^$')}", re.ASCII)
# What a token written before scopes existed may do: draw everywhere, as it did then, and create nothing.
UNSCOPED = (DRAW_ANY,)


class ScopeError(ValueError):
    """A scope that is not one of the above."""


def check_scopes(scopes: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The scopes, each checked, in the given order without repeats."""
    for scope in scopes:
        if not SCOPE_PATTERN.fullmatch(scope):
            raise ScopeError(f"{scope!r} is not a scope: use {ADMIN_SCOPE}, {DRAW_ANY} or draw:SPACE_NAME")
    return tuple(dict.fromkeys(scopes))
