"""A keyed pseudo-random permutation of [0, N): a balanced Feistel network with cycle-walking.

Pure computation (no I/O): the same key, size and tweak always give the same permutation.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from array import array

KEY_BYTES = 32
ROUNDS = 10
# Round outputs come from 64-byte BLAKE2b blocks, 16 four-byte words per block (see `_round_block`).
WORDS_PER_BLOCK = 16
# Up to this half width the round functions are precomputed as tables (ROUNDS * 2**16 words, 2.5 MB),
# which covers every space of up to 2**32 numbers; wider halves hash on every round.
TABLE_MAX_HALF_BITS = 16
# Half widths stay within the 32-bit words a round yields: spaces up to 2**54 numbers (JSON needs 2**53).
MAX_HALF_BITS = 27
_WORD = struct.Struct("<I")


class FeistelPermutation:
    """P: [0, size) -> [0, size), a bijection chosen by `key` (and `tweak`, which separates uses of one key).

    The domain is [0, 4**h) for the smallest h >= 1 with 4**h >= size, split into two halves of h bits.
    Round r maps (left, right) to (right, left XOR F_r(right)), where F_r(x) is the 32-bit word x % 16
    of BLAKE2b-512 keyed with `key` over (tweak, size, r, x // 16), cut to h bits: a keyed PRF of x.
    A balanced Feistel network is a permutation of the domain whatever F is; cycle-walking (apply it
    again until the value falls below `size`) restricts it to [0, size), which is still a bijection.
    The domain is less than 4 * size, so a value needs under 4 passes on average.
    """

    def __init__(self, key: bytes, size: int, tweak: bytes = b"", *, tables: bool | None = None) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"The key must be {KEY_BYTES} bytes, got {len(key)}.")
        if size < 1:
            raise ValueError(f"The size must be at least 1, got {size}.")
        half_bits = max(1, ((size - 1).bit_length() + 1) // 2)
        if half_bits > MAX_HALF_BITS:
            raise ValueError(f"The size must be at most 2**{2 * MAX_HALF_BITS}, got {size}.")
        self.size = size
        self.half_bits = half_bits
        self._mask = (1 << half_bits) - 1
        # Hashing the key once per round and copying the state saves BLAKE2b's key block per call.
        context = len(tweak).to_bytes(4, "little") + tweak + size.to_bytes(8, "little")
        self._round_states = [
            hashlib.blake2b(context + bytes([r]), key=key, person=b"uniquerand-v5") for r in range(ROUNDS)
        ]
        self._round_copies = [state.copy for state in self._round_states]
        use_tables = half_bits <= TABLE_MAX_HALF_BITS if tables is None else tables
        self._tables = [self._round_table(r) for r in range(ROUNDS)] if use_tables else None

    def __call__(self, index: int) -> int:
        if not 0 <= index < self.size:
            raise ValueError(f"The index must lie in [0, {self.size}), got {index}.")
        return self.many(index, 1)[0]

    def many(self, start: int, count: int) -> list[int]:
        """[P(start), P(start + 1), ..., P(start + count - 1)]."""
        if count < 0 or start < 0 or start + count > self.size:
            raise ValueError(f"[{start}, {start + count}) is not inside [0, {self.size}).")
        encrypt = self._encrypt_with_tables if self._tables is not None else self._encrypt_with_hashes
        size = self.size
        result = []
        for value in range(start, start + count):
            value = encrypt(value)
            while value >= size:
                value = encrypt(value)
            result.append(value)
        return result

    def _encrypt_with_tables(self, value: int) -> int:
        bits, mask = self.half_bits, self._mask
        left, right = value >> bits, value & mask
        for table in self._tables:
            left, right = right, left ^ table[right]
        return (left << bits) | right

    def _encrypt_with_hashes(self, value: int) -> int:
        bits, mask, word_at = self.half_bits, self._mask, _WORD.unpack_from
        left, right = value >> bits, value & mask
        # `_round_block` inlined (16 words a block: >> 4, & 15): this loop is the cost of every number in a
        # large space.
        for copy in self._round_copies:
            digest = copy()
            digest.update((right >> 4).to_bytes(4, "little"))
            left, right = right, left ^ (word_at(digest.digest(), (right & 15) << 2)[0] & mask)
        return (left << bits) | right

    @staticmethod
    def _round_block(state, block_index: int) -> bytes:
        digest = state.copy()
        digest.update(block_index.to_bytes(4, "little"))
        return digest.digest()

    def _round_table(self, r: int) -> array:
        """F_r(x) for every x of the half width: the same words the hashing path reads."""
        words = array("I")
        if words.itemsize != 4:
            raise RuntimeError("array('I') is not 32 bits wide on this platform.")
        for block_index in range(-(-(1 << self.half_bits) // WORDS_PER_BLOCK)):
            words.frombytes(self._round_block(self._round_states[r], block_index))
        if sys.byteorder != "little":
            words.byteswap()
        mask = self._mask
        return array("I", [word & mask for word in words])
