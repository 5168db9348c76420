"""How every remembering store chooses new codes: random draws, then an exact pick near the end.

Random draws alone fail near the end of a space, so once `max_attempts` draws for one number have
all hit used codes, the number is chosen uniformly among the codes still free. The callbacks run
inside the caller's lock or transaction, so the free codes cannot change underneath.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable

from uniquerand.numbers import NumberSpace, kth_free
from uniquerand.storage.contract import (
    InsufficientRemainingError,
    RetriesExhaustedError,
    SpaceExhaustedError,
)

EXACT_PICKS = 8


def pick_unused(
    space: NumberSpace,
    count: int,
    max_attempts: int,
    claim: Callable[[int], bool],
    count_used: Callable[[], int],
    used_ascending: Callable[[], Iterable[int]],
    claim_many: Callable[[list[int]], list[int]] | None = None,
) -> list[int]:
    """Claims `count` free codes of `space` and returns them.

    `claim(code)` records the code and says whether it was free; `count_used()` counts the used codes
    inside the space and `used_ascending()` yields them in ascending order (both include this call's
    claims). `claim_many(codes)`, where a store has it, claims distinct codes at once and returns those
    that were free: batches then take one round trip per round of draws. Raises when the space runs out,
    in which case the caller must discard every claim.
    """
    picked: list[int] = []
    if claim_many is not None and count > 1:
        picked = _draw_many_free(space, count, max_attempts, claim_many)
    for _ in range(count - len(picked)):
        code = _draw_free(space, max_attempts, claim)
        if code is None:
            code = _pick_exactly(space, count, len(picked), claim, count_used, used_ascending)
        picked.append(code)
    return picked


def _pick_exactly(
    space: NumberSpace,
    count: int,
    picked: int,
    claim: Callable[[int], bool],
    count_used: Callable[[], int],
    used_ascending: Callable[[], Iterable[int]],
) -> int:
    """A code chosen uniformly among the free ones, and claimed. Under one exclusive lock (the files) the
    first pick is claimed; a database shared by other writers can see another transaction take the code
    first (or hold it, not committed yet), so it counts and picks again, EXACT_PICKS times at most."""
    for _ in range(EXACT_PICKS):
        remaining = space.size - count_used()
        if remaining <= 0:
            if count == 1:
                raise SpaceExhaustedError("All possible numbers have been used.")
            raise InsufficientRemainingError(count, picked)
        code = kth_free(space.low, secrets.randbelow(remaining), used_ascending())
        # A count read before another writer's commit can promise more free codes than the list has: the
        # pick then falls past the space's end, and is never claimed.
        if space.contains(code) and claim(code):
            return code
    raise RetriesExhaustedError("Could not generate a unique number after multiple attempts.")


def _draw_many_free(
    space: NumberSpace, count: int, max_attempts: int, claim_many: Callable[[list[int]], list[int]]
) -> list[int]:
    picked: list[int] = []
    for _ in range(max_attempts):
        # A dict keeps the draw order (a set of ints would come out nearly sorted).
        candidates = list(dict.fromkeys(space.draw_many(count - len(picked))))
        claimed = claim_many(candidates)
        picked.extend(claimed)
        if len(picked) == count or not claimed:
            break
    return picked


def _draw_free(space: NumberSpace, max_attempts: int, claim: Callable[[int], bool]) -> int | None:
    for _ in range(max_attempts):
        code = space.draw()
        if claim(code):
            return code
    return None
