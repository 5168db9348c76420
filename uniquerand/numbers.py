"""The number spaces: which integers a stage may issue, and how a float maps onto its grid.

Every stage stores and compares *codes*: plain integers. An int's code is the int itself; a float's
code is its count of grid steps (value * 10**decimals), so uniqueness never compares binary floats.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Literal

NumberKind = Literal["int", "float"]
KINDS: tuple[NumberKind, ...] = ("int", "float")

# Beyond 2**53 - 1 (JavaScript's Number.MAX_SAFE_INTEGER) a JSON number, an IEEE double in most clients,
# no longer stands for one integer only.
JSON_SAFE_LIMIT = 2**53 - 1
# A float's grid steps must stay below 2**52: there a double's spacing is under one grid step, so distinct
# codes are distinct doubles and each parses back to its own code.
FLOAT_STEPS_LIMIT = 2**52


@dataclass(frozen=True)
class NumberSpace:
    """The inclusive range of codes [low, high] of one kind; `decimals` > 0 only for floats."""

    kind: NumberKind
    low: int
    high: int
    decimals: int = 0

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    def contains(self, code: int) -> bool:
        return self.low <= code <= self.high

    @property
    def mask(self) -> int:
        """Ones over the bit length of the largest offset (size - 1): a random word masked with it falls
        inside the space at least half of the time, and is uniform there (the draws reject the rest)."""
        return (1 << (self.size - 1).bit_length()) - 1

    def draw(self) -> int:
        """A code drawn uniformly from the space by the operating system's CSPRNG: a random word masked to the
        size's bit length, drawn again while it falls outside. One read per try, where `secrets.randbelow`
        takes one bit more, and so two reads on average, for a size that is a power of two (2**32 ints)."""
        mask = self.mask
        width = (mask.bit_length() + 7) // 8
        while True:
            value = int.from_bytes(os.urandom(width), "little") & mask
            if value < self.size:
                return self.low + value

    def draw_many(self, count: int) -> list[int]:
        """`count` independent uniform draws, as `draw` makes them (mask to the size's bit length, reject
        what falls outside), from one read of the CSPRNG instead of a system call per number."""
        mask = self.mask
        draws: list[int] = []
        while len(draws) < count:
            # At least half of the masked words land inside the space; read a little more than twice that.
            words = struct.iter_unpack("<Q", os.urandom(8 * (2 * (count - len(draws)) + 8)))
            draws.extend(self.low + (word & mask) for (word,) in words if (word & mask) < self.size)
        return draws[:count]

    def to_json_value(self, code: int) -> int | float:
        """The number a client sees for a code.

        For floats this is the double nearest to code / 10**decimals (Python's int / int is correctly
        rounded), which parses back and rounds to exactly the stored grid value.
        """
        if self.kind == "int":
            return code
        return code / 10**self.decimals


def spaces_from_config(config: dict) -> dict[NumberKind, NumberSpace]:
    """Both spaces from validated settings (see `config.validate`)."""
    return {
        "int": NumberSpace("int", config["INT_MIN"], config["INT_MAX"]),
        # Floats are drawn from [FLOAT_MIN, FLOAT_MAX): the last grid step below FLOAT_MAX is the top.
        "float": NumberSpace(
            "float",
            config["FLOAT_MIN_STEPS"],
            config["FLOAT_MAX_STEPS"] - 1,
            config["FLOAT_DECIMALS"],
        ),
    }


def kth_free(low: int, k: int, used_ascending) -> int:
    """The k-th (0-based) code >= low that is not in `used_ascending` (sorted ascending, distinct).

    Walks the used codes once and stops at the answer, so callers can stream them from an index.
    """
    candidate = low + k
    for code in used_ascending:
        if code < low:
            continue
        if code > candidate:
            break
        candidate += 1
    return candidate
