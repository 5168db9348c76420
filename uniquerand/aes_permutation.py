"""The permutation of new /v5 databases: FF1's alternating-modulus Feistel network over Z_a x Z_b with AES-256
as its round function, computed for a run of indexes at once: a round is one AES call (or one table lookup)
and a few numpy operations for the whole run, not a Python step per number."""

from __future__ import annotations

import hashlib
import threading
from array import array
from collections.abc import Sequence

import numpy as np
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
    round_table,
)

# The indexes computed together when the rounds encrypt: a run shares one AES call per round, and still
# takes well under a millisecond (it is computed under /v5's process lock).
RUN_WITH_AES = 512
# AES blocks (x || r) and their first words: 64-bit little-endian, on any platform.
_WORD = np.dtype("<u8")


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
        self._table_pairs: list[tuple[np.ndarray, np.ndarray]] = []
        if use_tables:
            # Round r reads the other half: b inputs for the even rounds (modulus a), a for the odd ones.
            rounds = [(self.a, self.b), (self.b, self.a)] * (ROUNDS // 2)
            self._tables = [
                round_table(self._round_words(r, np.arange(inputs), modulus).tolist(), modulus - 1)
                for r, (modulus, inputs) in enumerate(rounds)
            ]
            # The same tables as arrays that numpy indexes by a whole run of halves at once.
            self._table_pairs = [
                (np.frombuffer(even, dtype=even.typecode), np.frombuffer(odd, dtype=odd.typecode))
                for even, odd in zip(self._tables[0::2], self._tables[1::2], strict=True)
            ]

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
        values = self._network(np.asarray(indexes, dtype=np.int64))
        outside = np.flatnonzero(values >= self.size)
        while outside.size:
            values[outside] = self._network(values[outside])
            outside = outside[values[outside] >= self.size]
        return values.tolist()

    def _network(self, values: np.ndarray) -> np.ndarray:
        """One pass of the 10 rounds over every value, a round at a time for the whole run (numpy: a run costs a
        few array operations per round, not a Python step per number), from the tables or from AES. Values are
        below 2**54 (`MAX_SIZE_BITS`), so int64 holds every sum and product."""
        a, b = self.a, self.b
        lefts, rights = np.divmod(values, b)
        if self._tables is not None:
            for even, odd in self._table_pairs:
                lefts = (lefts + even[rights]) % a
                rights = (rights + odd[lefts]) % b
            return lefts * b + rights
        for r in range(0, ROUNDS, 2):
            lefts = (lefts + self._round_words(r, rights, a)) % a
            rights = (rights + self._round_words(r + 1, lefts, b)) % b
        return lefts * b + rights

    def _round_words(self, r: int, inputs: np.ndarray, modulus: int) -> np.ndarray:
        """F_r(x) mod `modulus` for every x of `inputs`: one AES-256 block (x || r) each, in one call; int64, as
        the halves are (a sum of int64 and uint64 would be float64)."""
        blocks = np.empty((len(inputs), 2), dtype=_WORD)
        blocks[:, 0] = inputs
        blocks[:, 1] = r
        with self._encryptor_lock:
            encrypted = self._encryptor.update(blocks.tobytes())
        return (np.frombuffer(encrypted, dtype=_WORD)[0::2] % np.uint64(modulus)).astype(np.int64)
