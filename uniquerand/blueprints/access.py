"""Who may call: the bearer-token check of the stage and space paths (and of /metrics with METRICS_REQUIRE_TOKEN),
and its refusals: 401 with `WWW-Authenticate: Bearer`, 403 `forbidden` for a token without the scope the path
needs, or 503 `tokens_unavailable` while the tokens file cannot be read. Only built when TOKENS_FILE is set:
without it no request pays for any of this."""

from __future__ import annotations

import logging
import re
import time
from typing import NoReturn

from flask import g, request
from werkzeug.exceptions import Forbidden, ServiceUnavailable, Unauthorized

from uniquerand.logs import event
from uniquerand.tokens import TokenFile, TokenFileError

log = logging.getLogger(__name__)

REALM = "uniquerand"
# RFC 6750's credentials: the scheme in any case, spaces (1*SP), a b64token. re.ASCII: with IGNORECASE alone,
# [A-Za-z] would also match the Kelvin sign and the long s.
_BEARER = re.compile(r"Bearer +([A-Za-z0-9\-._~+/]+=*)", re.ASCII | re.IGNORECASE)
# A token is 47 characters; a header far longer is not one, and is not hashed.
MAX_HEADER_LENGTH = 512
# A tokens file that cannot be read is logged at most this often per worker, not on every request.
UNAVAILABLE_LOG_INTERVAL = 10.0


class UnauthorizedError(Unauthorized):
    """401 with the Bearer challenge; `invalid` adds `error="invalid_token"` (a token came and was refused)."""

    def __init__(self, message: str, invalid: bool) -> None:
        super().__init__(description=message)
        self.extra = {"code": "unauthorized"}
        self.challenge = f'Bearer realm="{REALM}"' + (', error="invalid_token"' if invalid else "")

    def get_headers(self, environ=None, scope=None) -> list[tuple[str, str]]:
        return [*super().get_headers(environ, scope), ("WWW-Authenticate", self.challenge)]


class ForbiddenError(Forbidden):
    """403: the token is valid, but not for this: it lacks every scope that would allow the request."""

    def __init__(self, needed: tuple[str, ...]) -> None:
        wanted = " or ".join(f"`{scope}`" for scope in needed)
        super().__init__(description=f"This token may not do this: it needs the scope {wanted}.")
        self.extra = {"code": "forbidden", "needed_scopes": list(needed)}
        # RFC 6750 3.1: a valid token without the scope.
        self.challenge = f'Bearer realm="{REALM}", error="insufficient_scope", scope="{" ".join(needed)}"'

    def get_headers(self, environ=None, scope=None) -> list[tuple[str, str]]:
        return [*super().get_headers(environ, scope), ("WWW-Authenticate", self.challenge)]


class TokensUnavailableError(ServiceUnavailable):
    """503: the tokens file is configured but cannot be read or parsed, so no token can be checked."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            description="Access tokens cannot be checked now (the server's tokens file is unreadable); retry later.",
            retry_after=retry_after,
        )
        self.extra = {"code": "tokens_unavailable"}


class BearerGuard:
    """Checks the request's `Authorization: Bearer <token>` against the tokens file."""

    def __init__(self, tokens: TokenFile, retry_after: int) -> None:
        self.tokens = tokens
        self.retry_after = retry_after
        self._reported: tuple[str, float] = ("", 0.0)

    def client(self, *any_of: str) -> str:
        """The name of the client whose token the request carries, when that token allows one of the scopes
        `any_of` (any valid token when none is named); raises the 401, 403 or 503 otherwise."""
        header = request.environ.get("HTTP_AUTHORIZATION")
        if header is None:
            self._refuse("missing", invalid=False)
        # Two Authorization headers arrive joined by a comma, which no token contains.
        match = _BEARER.fullmatch(header) if len(header) <= MAX_HEADER_LENGTH else None
        if match is None:
            scheme, _, credentials = header.partition(" ")
            # Another scheme, or `Bearer` with nothing after it, presents no token: RFC 6750 sends no error then.
            self._refuse("malformed", invalid=scheme.lower() == "bearer" and bool(credentials.strip()))
        try:
            entry = self.tokens.identify(match.group(1))
        except TokenFileError as err:
            self._report_unavailable(str(err))
            raise TokensUnavailableError(self.retry_after) from None
        if entry is None:
            self._refuse("unknown", invalid=True)
        if any_of and not any(entry.allows(scope) for scope in any_of):
            event(log, "access_refused", logging.WARNING, path=request.path, reason="scope", client=entry.name)
            raise ForbiddenError(any_of)
        return entry.name

    def check_ready(self) -> str | None:
        """Why no token can be checked now, or None (for /readyz)."""
        try:
            self.tokens.entries()
        except TokenFileError as err:
            self._report_unavailable(str(err))
            return "access tokens cannot be checked: the tokens file is unreadable (see the server's log)"
        return None

    def _refuse(self, reason: str, invalid: bool) -> NoReturn:
        # The reason and where from, never what was sent: a near miss is still someone's secret.
        event(log, "access_refused", logging.WARNING, path=request.path, reason=reason, remote=request.remote_addr)
        if invalid:
            raise UnauthorizedError("The access token was not accepted.", invalid=True)
        raise UnauthorizedError("This path needs an access token: send `Authorization: Bearer <token>`.", False)

    def _report_unavailable(self, message: str) -> None:
        now = time.monotonic()
        if self._reported[0] != message or now - self._reported[1] >= UNAVAILABLE_LOG_INTERVAL:
            self._reported = (message, now)
            event(log, "tokens_unavailable", logging.ERROR, message=message)


def client_name() -> str:
    """The name of the client the request's token belongs to (set by a stage's guard)."""
    return g.client_name


def guard_from_config(config: dict) -> BearerGuard | None:
    path = config["TOKENS_FILE"]
    return BearerGuard(TokenFile(path), config["RETRY_AFTER"]) if path else None
