"""The permutation of new /v5 databases: FF1's alternating-modulus Feistel network over Z_a x Z_b with AES-256
as its round function, computed for a run of indexes at once, so that a round of AES is one call for the run."""

from __future__ import annotations

import hashlib
import sys
import threading
from array import array
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from uniquerand.permutation import (
    ROUNDS,
    RUN_WITH_TABLES,
    TABLE_MAX_INPUTS,
    check_arguments,
    check_index,
    check_range,
    permutation_context,
    radix_halves,
    radix_pass_with_tables,
    round_table,
)

# The indexes computed together when the rounds encrypt: a run shares one AES call per round, and still
# takes well under a millisecond (it is computed under /v5's process lock).
RUN_WITH_AES = 512
_LITTLE_ENDIAN = sys.byteorder == "little"


class AesRadixPermutation:
    """P: [0, size) -> [0, size), a bijection chosen by `key` (and `tweak`, which separates uses of one key).

    The network of `RadixFeistelPermutation`: the domain Z_a x Z_b (see `radix_halves`), 10 rounds, round r
    mapping (left, right) to (right, (left + F_r(right)) mod m_r), m_r = a for even r and b for odd r, then
    cycle-walking into [0, size). F_r(x) is the first 64-bit word (little-endian) of AES-256_K(x || r), x and
    r as 64-bit little-endian words, with K the 256-bit BLAKE2b of (tweak, size) keyed with `key`: a keyed
    PRF of (r, x) for each space. Reduced mod m_r (a bias under 2**-37).

    Spaces of up to 2**32 use round tables, as the BLAKE2b networks do; wider ones (the floats) encrypt a
    round's inputs for a whole run of indexes in one AES call (`many`): the call's fixed cost is shared by
    the run, where the BLAKE2b networks pay a Python call per round and number.
    """

    def __init__(self, key: bytes, size: int, tweak: bytes = b"", *, tables: bool | None = None) -> None:
        check_arguments(key, size)
        if array("Q").itemsize != 8:
            raise RuntimeError("array('Q') is not 64 bits wide on this platform.")
        self.size = size
        round_key = hashlib.blake2b(permutation_context(size, tweak), key=key, digest_size=32, person=b"uniquerand-v5a")
        # One encryptor for every call: making one costs more than encrypting a run (ECB keeps no state
        # between calls of whole blocks). Its calls are serialised, as a context must not be shared.
        self._encryptor = Cipher(algorithms.AES(round_key.digest()), modes.ECB()).encryptor()
        self._encryptor_lock = threading.Lock()
        self.a, self.b = radix_halves(size)
        use_tables = self.a <= TABLE_MAX_INPUTS if tables is None else tables
        self.run_length = RUN_WITH_TABLES if use_tables else RUN_WITH_AES
        self._tables: list[array] | None = None
        self._table_pairs: list[tuple[array, array]] = []
        if use_tables:
            # Round r reads the other half: b inputs for the even rounds (modulus a), a for the odd ones.
            rounds = [(self.a, self.b), (self.b, self.a)] * (ROUNDS // 2)
            self._tables = [
                round_table([word % modulus for word in self._round_words(r, range(inputs))], modulus - 1)
                for r, (modulus, inputs) in enumerate(rounds)
            ]
            self._table_pairs = list(zip(self._tables[0::2], self._tables[1::2], strict=True))

    def __call__(self, index: int) -> int:
        check_index(index, self.size)
        return self._walk([index])[0]

    def many(self, start: int, count: int) -> list[int]:
        """[P(start), P(start + 1), ..., P(start + count - 1)], computed together."""
        check_range(start, count, self.size)
        return self._walk(range(start, start + count))

    def _walk(self, indexes: Sequence[int]) -> list[int]:
        """The network over `indexes`, then again over the values that fell outside [0, size) (cycle-walking;
        fewer than 1 in b), until none does."""
        size = self.size
        values = self._network(indexes)
        outside = [i for i, value in enumerate(values) if value >= size]
        while outside:
            for i, value in zip(outside, self._network([values[i] for i in outside]), strict=True):
                values[i] = value
            outside = [i for i in outside if values[i] >= size]
        return values

    def _network(self, values: Sequence[int]) -> list[int]:
        """One pass of the 10 rounds over every value: a value at a time from the tables, else a round at a time."""
        a, b = self.a, self.b
        if self._tables is not None:
            pairs = self._table_pairs
            return [radix_pass_with_tables(value, a, b, pairs) for value in values]
        lefts = [value // b for value in values]
        rights = [value % b for value in values]
        for r in range(0, ROUNDS, 2):
            words = self._round_words(r, rights)
            lefts = [(left + word) % a for left, word in zip(lefts, words, strict=True)]
            words = self._round_words(r + 1, lefts)
            rights = [(right + word) % b for right, word in zip(rights, words, strict=True)]
        return [left * b + right for left, right in zip(lefts, rights, strict=True)]

    def _round_words(self, r: int, inputs: Sequence[int]) -> list[int]:
        """F_r(x) before its reduction, for every x of `inputs`: one AES-256 block (x || r) each, in one call."""
        blocks = array("Q", bytes(16 * len(inputs)))
        blocks[0::2] = array("Q", inputs)
        blocks[1::2] = array("Q", [r]) * len(inputs)
        if not _LITTLE_ENDIAN:
            blocks.byteswap()
        with self._encryptor_lock:
            encrypted = self._encryptor.update(memoryview(blocks).cast("B"))
        words = array("Q", encrypted)
        if not _LITTLE_ENDIAN:
            words.byteswap()
        return words[0::2].tolist()
