"""A small client of /v5 (on `requests`): draws with an Idempotency-Key, so that a retry after a lost answer gets
the same numbers back instead of burning new ones; retries what the server says may succeed (a 503 or 409 with
Retry-After, a dropped connection, a timeout) with backoff; never retries any other 4xx or 5xx; checks signed
results against the server's key set.

    from uniquerand.client import Client
    client = Client("http://127.0.0.1:8000", token=None)
    client.create_space("raffle", "int", 1, 5000)
    result = client.draw("raffle", count=3, signed=True)   # verified; result["numbers"], result["serial"]
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import requests

from uniquerand.signing import verify

KEY_SET_PATH = "/v5/signing-keys"


class UniquerandError(Exception):
    """The server's answer, when it is no success and retrying will not help (or the retries ran out)."""

    def __init__(self, status: int, code: str, message: str, attempts: int) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.attempts = status, code, message, attempts


class Client:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        attempts: int = 6,
        backoff: float = 0.5,
        max_wait: float = 30.0,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout, self.attempts, self.backoff, self.max_wait = timeout, attempts, backoff, max_wait
        self.session = session or requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self._key_set: dict | None = None

    def draw(
        self,
        space: str | None = None,
        count: int | None = None,
        *,
        kind: str | None = None,
        signed: bool = False,
        key: str | None = None,
    ) -> dict[str, Any]:
        """Numbers from a named space (or /v5/random without `space`; `kind`: its `int` or `float`). One key for
        every attempt (a new UUID unless given): whichever attempt the server answered first, the answer is the
        same. A signed result is verified before it is returned."""
        path = "/v5/random" if space is None else f"/v5/spaces/{space}/random"
        params = {k: v for k, v in (("type", kind), ("count", count)) if v is not None}
        if signed:
            params["signed"] = "true"
        result = self._get(path, params, {"Idempotency-Key": key or str(uuid.uuid4())})
        if signed:
            self.verify(result)
        return result

    def create_space(self, name: str, kind: str, low: float, high: float, decimals: int | None = None) -> dict:
        """Creates the space, or finds it with this definition (a different one: UniquerandError 409)."""
        body: dict[str, Any] = {"type": kind, "min": low, "max": high}
        if decimals is not None:
            body["decimals"] = decimals
        return self._request("PUT", f"/v5/spaces/{name}", json=body)

    def signed_draw(self, space: str, serial: int) -> dict[str, Any]:
        """A space's signed draw by serial, verified."""
        result = self._get(f"/v5/spaces/{space}/draws/{serial}", {}, {})
        self.verify(result)
        return result

    def verify(self, result: dict[str, Any]) -> str:
        """Checks a signed result against the server's key set (fetched again once for a key it does not know
        yet: a rotation); raises ValueError saying what failed."""
        if self._key_set is None or result.get("key_id") not in {k.get("kid") for k in self._key_set["keys"]}:
            self._key_set = self._get(KEY_SET_PATH, {}, {})
        return verify(result, self._key_set)

    def _get(self, path: str, params: dict, headers: dict) -> Any:
        return self._request("GET", path, params=params, headers=headers)

    def _request(self, method: str, path: str, **options: Any) -> Any:
        url = self.base_url + path
        for attempt in range(1, self.attempts + 1):
            wait = min(self.max_wait, self.backoff * 2 ** (attempt - 1))
            try:
                response = self.session.request(method, url, timeout=self.timeout, **options)
            except (requests.ConnectionError, requests.Timeout):
                # The request may have been answered and the answer lost: the same key asks for that answer.
                if attempt == self.attempts:
                    raise
                time.sleep(wait)
                continue
            if response.ok:
                return response.json()
            retry_after = response.headers.get("Retry-After")
            # Retry-After marks what may succeed later (store_busy, held_elsewhere, request_in_progress); a
            # 503 without it (space_exhausted) will not.
            if response.status_code in (409, 503) and retry_after and attempt < self.attempts:
                time.sleep(min(self.max_wait, max(wait, float(retry_after))))
                continue
            raise _error_of(response, attempt)
        raise AssertionError("unreachable")


def _error_of(response: requests.Response, attempts: int) -> UniquerandError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    code = body.get("code", "unknown") if isinstance(body, dict) else "unknown"
    message = body.get("error", response.text[:200]) if isinstance(body, dict) else response.text[:200]
    return UniquerandError(response.status_code, code, message, attempts)
