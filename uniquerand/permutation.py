"""Keyed pseudo-random permutations of [0, N): Feistel networks of 10 keyed BLAKE2b rounds, with cycle-walking.

`RadixFeistelPermutation` (FF1's alternating-modulus network) and `BinaryFeistelPermutation` stay, unchanged,
for the databases that recorded them; new ones get `aes_permutation.AesRadixPermutation` (see
`storage.keyfile`), which shares the `Permutation` protocol, the argument checks and the radix helpers
defined here. Pure computation (no I/O): the same key, size and tweak always give the same permutation.
"""

from __future__ import annotations

import hashlib
import math
import struct
import sys
from abc import ABC, abstractmethod
from array import array
from collections.abc import Callable
from typing import Protocol

KEY_BYTES = 32
ROUNDS = 10
# Spaces of up to 2**54 numbers (JSON needs 2**53).
MAX_SIZE_BITS = 54
# A round's outputs for 64 / word size consecutive inputs come from one BLAKE2b-512 digest.
BLOCK_BYTES = 64
# Up to this many inputs a round's function is precomputed as a table (16-bit values when they fit: ROUNDS
# * 2**16 * 2 bytes, 1.3 MB, for 2**32 ints), which covers every space of up to 2**32 numbers; wider
# rounds hash on every call.
TABLE_MAX_INPUTS = 2**16
_WORD32 = struct.Struct("<I")
_WORD64 = struct.Struct("<Q")


# How many indexes /v5 computes together (see `storage.leases`): a run's fixed cost shared by many numbers,
# under a millisecond in all, since it is computed under /v5's process lock (hashed rounds cost far more per
# number than tables, hence shorter runs).
RUN_WITH_TABLES = 512
RUN_WITH_HASHES = 32


class Permutation(Protocol):
    """What /v5 needs of a permutation of [0, size): single indexes and runs of them, and the length of run
    worth computing together."""

    size: int
    run_length: int

    def __call__(self, index: int) -> int: ...

    def many(self, start: int, count: int) -> list[int]: ...


def check_arguments(key: bytes, size: int) -> None:
    if len(key) != KEY_BYTES:
        raise ValueError(f"The key must be {KEY_BYTES} bytes, got {len(key)}.")
    if size < 1:
        raise ValueError(f"The size must be at least 1, got {size}.")
    if size > 2**MAX_SIZE_BITS:
        raise ValueError(f"The size must be at most 2**{MAX_SIZE_BITS}, got {size}.")


def check_index(index: int, size: int) -> None:
    if not 0 <= index < size:
        raise ValueError(f"The index must lie in [0, {size}), got {index}.")


def check_range(start: int, count: int, size: int) -> None:
    if count < 0 or start < 0 or start + count > size:
        raise ValueError(f"[{start}, {start + count}) is not inside [0, {size}).")


def permutation_context(size: int, tweak: bytes) -> bytes:
    """What a permutation's round functions are keyed over besides the key: a different space or tweak
    gives an unrelated permutation."""
    return len(tweak).to_bytes(4, "little") + tweak + size.to_bytes(8, "little")


class FeistelPermutation(ABC):
    """What both networks share: the argument checks, the keyed round states and cycle-walking. A subclass
    defines one pass over its domain twice, with round tables and with hashes: the same function."""

    _tables: list[array] | None

    def __init__(self, key: bytes, size: int, tweak: bytes, person: bytes) -> None:
        check_arguments(key, size)
        self.size = size
        # Hashing the key once per round and copying the state saves BLAKE2b's key block per call.
        context = permutation_context(size, tweak)
        self._round_states = [hashlib.blake2b(context + bytes([r]), key=key, person=person) for r in range(ROUNDS)]
        self._round_copies = [state.copy for state in self._round_states]

    @property
    def run_length(self) -> int:
        """How many indexes /v5 computes together with this network (see RUN_WITH_TABLES)."""
        return RUN_WITH_TABLES if self._tables is not None else RUN_WITH_HASHES

    def __call__(self, index: int) -> int:
        """P(index): a single number's whole cost, so without the list and range of `many`."""
        check_index(index, self.size)
        encrypt = self._encrypt
        value = encrypt(index)
        while value >= self.size:
            value = encrypt(value)
        return value

    def many(self, start: int, count: int) -> list[int]:
        """[P(start), P(start + 1), ..., P(start + count - 1)]."""
        check_range(start, count, self.size)
        encrypt, size = self._encrypt, self.size
        result = []
        for value in range(start, start + count):
            value = encrypt(value)
            while value >= size:
                value = encrypt(value)
            result.append(value)
        return result

    @property
    def _encrypt(self) -> Callable[[int], int]:
        """One pass over the domain: from the round tables when there are any, else by hashing."""
        return self._encrypt_with_tables if self._tables is not None else self._encrypt_with_hashes

    @abstractmethod
    def _encrypt_with_tables(self, value: int) -> int: ...

    @abstractmethod
    def _encrypt_with_hashes(self, value: int) -> int: ...

    def _round_words(self, r: int, word: struct.Struct, count: int) -> array:
        """The first `count` words of round r's output blocks, as the hashing path reads them with `word`."""
        words = array(word.format[-1])
        if words.itemsize != word.size:
            raise RuntimeError(f"array({word.format[-1]!r}) is not {8 * word.size} bits wide on this platform.")
        per_block = BLOCK_BYTES // word.size
        for block_index in range(-(-count // per_block)):
            digest = self._round_states[r].copy()
            digest.update(block_index.to_bytes(4, "little"))
            words.frombytes(digest.digest())
        if sys.byteorder != "little":
            words.byteswap()
        return words[:count]


class BinaryFeistelPermutation(FeistelPermutation):
    """P: [0, size) -> [0, size), a bijection chosen by `key` (and `tweak`, which separates uses of one key).

    The domain is [0, 4**h) for the smallest h >= 1 with 4**h >= size, split into two halves of h bits.
    Round r maps (left, right) to (right, left XOR F_r(right)), where F_r(x) is the 32-bit word x % 16
    of BLAKE2b-512 keyed with `key` over (tweak, size, r, x // 16), cut to h bits: a keyed PRF of x.
    A balanced Feistel network is a permutation of the domain whatever F is; cycle-walking (apply it
    again until the value falls below `size`) restricts it to [0, size), which is still a bijection.
    The domain is less than 4 * size, so a value needs under 4 passes on average (2.8 for size 10**14).
    """

    def __init__(self, key: bytes, size: int, tweak: bytes = b"", *, tables: bool | None = None) -> None:
        super().__init__(key, size, tweak, b"uniquerand-v5")
        self.half_bits = max(1, ((size - 1).bit_length() + 1) // 2)
        self._mask = (1 << self.half_bits) - 1
        use_tables = 1 << self.half_bits <= TABLE_MAX_INPUTS if tables is None else tables
        self._tables = [self._round_table(r) for r in range(ROUNDS)] if use_tables else None

    def _encrypt_with_tables(self, value: int) -> int:
        bits, mask = self.half_bits, self._mask
        left, right = value >> bits, value & mask
        for table in self._tables:
            left, right = right, left ^ table[right]
        return (left << bits) | right

    def _encrypt_with_hashes(self, value: int) -> int:
        bits, mask, word_at = self.half_bits, self._mask, _WORD32.unpack_from
        left, right = value >> bits, value & mask
        # The block read inlined (16 words a block: >> 4, & 15): this loop is the cost of every number.
        for copy in self._round_copies:
            digest = copy()
            digest.update((right >> 4).to_bytes(4, "little"))
            left, right = right, left ^ (word_at(digest.digest(), (right & 15) << 2)[0] & mask)
        return (left << bits) | right

    def _round_table(self, r: int) -> array:
        """F_r(x) for every x of the half width: the same words the hashing path reads."""
        mask = self._mask
        return round_table([word & mask for word in self._round_words(r, _WORD32, 1 << self.half_bits)], mask)


class RadixFeistelPermutation(FeistelPermutation):
    """P: [0, size) -> [0, size), a bijection chosen by `key` (and `tweak`, which separates uses of one key).

    The domain is Z_a x Z_b with a = ceil(sqrt(size)) and b = ceil(size / a): x is (x // b, x % b), and
    a * b - size < a. Round r maps (left, right) to (right, (left + F_r(right)) mod m_r), m_r = a for even r
    and b for odd r, so the halves trade places and moduli (FF1's construction): each round is invertible
    whatever F is, and after the 10 rounds (an even number) the state is back in Z_a x Z_b, read as
    left * b + right. F_r(x) is the 64-bit word x % 8 of BLAKE2b-512 keyed with `key` over (tweak, size, r,
    x // 8), reduced mod m_r (a bias under 2**-37). Cycle-walking restricts the network to [0, size), which
    is still a bijection; fewer than 1 value in b needs a second pass (none when size = a * b, as for 10**14).
    """

    def __init__(self, key: bytes, size: int, tweak: bytes = b"", *, tables: bool | None = None) -> None:
        super().__init__(key, size, tweak, b"uniquerand-v5r")
        self.a, self.b = radix_halves(size)
        # b <= a: the odd rounds read the wider half.
        use_tables = self.a <= TABLE_MAX_INPUTS if tables is None else tables
        self._tables = [self._round_table(r) for r in range(ROUNDS)] if use_tables else None
        # The network runs as 5 pairs of rounds: an even round's output is the next odd round's input.
        rounds = self._tables if self._tables is not None else self._round_copies
        self._pairs = list(zip(rounds[0::2], rounds[1::2], strict=True))

    def _encrypt_with_tables(self, value: int) -> int:
        return radix_pass_with_tables(value, self.a, self.b, self._pairs)

    def _encrypt_with_hashes(self, value: int) -> int:
        a, b, word_at = self.a, self.b, _WORD64.unpack_from
        left, right = divmod(value, b)
        # As with tables, the block read inlined (8 words a block: >> 3, & 7): this loop is the cost of every
        # number in a large space.
        for even, odd in self._pairs:
            digest = even()
            digest.update((right >> 3).to_bytes(4, "little"))
            left = (left + word_at(digest.digest(), (right & 7) << 3)[0]) % a
            digest = odd()
            digest.update((left >> 3).to_bytes(4, "little"))
            right = (right + word_at(digest.digest(), (left & 7) << 3)[0]) % b
        return left * b + right

    def _round_table(self, r: int) -> array:
        """F_r(x) mod m_r for every x of round r's input: the same values the hashing path adds."""
        modulus, inputs = (self.a, self.b) if r % 2 == 0 else (self.b, self.a)
        return round_table([word % modulus for word in self._round_words(r, _WORD64, inputs)], modulus - 1)


def radix_halves(size: int) -> tuple[int, int]:
    """(a, b) = (ceil(sqrt(size)), ceil(size / a)): Z_a x Z_b holds [0, size) with fewer than a values to
    spare, and b <= a."""
    a = math.isqrt(size - 1) + 1
    return a, -(-size // a)


def radix_pass_with_tables(value: int, a: int, b: int, pairs: list[tuple[array, array]]) -> int:
    """One pass of a radix network over Z_a x Z_b from its round tables, as pairs (even round, odd round)."""
    left, right = divmod(value, b)
    # An even round gives (right, left'), the odd one after it (left', right'): updated in place, the halves
    # never swap.
    for even, odd in pairs:
        left = (left + even[right]) % a
        right = (right + odd[left]) % b
    return left * b + right


def round_table(values: list[int], largest: int) -> array:
    """A round table in the narrowest array that holds `largest`: 16-bit words for the halves of 2**32 ints
    (1.3 MB for the 10 rounds, not 2.6), so that more lookups land in the CPU's caches. (32-bit words only
    when tables are forced on a wider space, as tests do.)"""
    return array("H" if largest < 2**16 else "I", values)
