"""The keyed Feistel permutations: bijections of [0, N) for every N, fixed by their key, the same on both paths."""

from __future__ import annotations

import hashlib
import math
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from uniquerand.aes_permutation import AesRadixPermutation
from uniquerand.permutation import BinaryFeistelPermutation, RadixFeistelPermutation

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
# Powers of 4 and the sizes just above them, where the binary network's domain is nearly 4 times the space
# and cycle-walking runs longest; 1 and 2 are the degenerate ends.
SIZES = [1, 2, 3, 4, 5, 15, 16, 17, 64, 65, 256, 257, 1000, 1024, 1025, 4096, 4097]
# For the radix network: the degenerate ends (a or b = 1), primes (b does not divide the size), squares
# (a * b = N) and the squares + 1 above them, and a * (a - 1) + 1, where a * b - N = a - 1 is the largest
# part of the domain outside the space (3, 7, 21, 91, 10101, 65281); 4**8 + 1 = 65537 is prime too.
RADIX_SIZES = [1, 2, 3, 4, 5, 7, 15, 16, 17, 21, 64, 65, 91, 257, 1024, 1025, 10007, 10101, 65281, 65536, 65537]
# The tweaks /v5 gives the default int and float spaces (kind, low, high, decimals).
INT_TWEAK = b"int:0:4294967295:0"
FLOAT_TWEAK = b"float:0:100000000:6"
PERMUTATION_TYPES = pytest.mark.parametrize(
    "permutation_type",
    [BinaryFeistelPermutation, RadixFeistelPermutation, AesRadixPermutation],
    ids=["binary", "radix", "aes"],
)
RADIX_TYPES = pytest.mark.parametrize(
    "radix_type", [RadixFeistelPermutation, AesRadixPermutation], ids=["radix", "aes"]
)


@pytest.mark.parametrize("tables", [True, False], ids=["tables", "hashes"])
@pytest.mark.parametrize("size", SIZES)
def test_permutation_is_a_bijection(size, tables):
    permutation = BinaryFeistelPermutation(KEY, size, tables=tables)

    assert sorted(permutation.many(0, size)) == list(range(size))


@RADIX_TYPES
@pytest.mark.parametrize("tables", [True, False], ids=["tables", "hashes"])
@pytest.mark.parametrize("size", RADIX_SIZES)
def test_radix_permutation_is_a_bijection(radix_type, size, tables):
    permutation = radix_type(KEY, size, tables=tables)

    assert sorted(permutation.many(0, size)) == list(range(size))


@RADIX_TYPES
@pytest.mark.parametrize("size", [1, 2, 3, 7, 91, 1000, 65537, 2**32, 2**32 + 1, 10**9 + 7, 10**14, 2**54])
def test_radix_permutation_domain_barely_exceeds_the_space(radix_type, size):
    # Fewer than a values of the domain lie outside the space: under 1 in b needs a second pass.
    permutation = radix_type(KEY, size, tables=False)
    a, b = permutation.a, permutation.b

    assert (a - 1) ** 2 < size <= a * a
    assert 0 <= a * b - size < a
    assert b <= a


def test_permutation_tables_and_hashes_compute_the_same_function():
    size = 4**9 + 1
    sample = range(0, size, 97)
    with_tables = BinaryFeistelPermutation(KEY, size, tables=True)
    with_hashes = BinaryFeistelPermutation(KEY, size, tables=False)

    assert [with_tables(i) for i in sample] == [with_hashes(i) for i in sample]


# 4**9 + 1: a = 513 and b = 512 differ; 10**9 + 7: cycle-walking on 14122 values; 2**32: the widest tables.
@RADIX_TYPES
@pytest.mark.parametrize("size", [4**9 + 1, 10**9 + 7, 2**32])
def test_radix_permutation_tables_and_hashes_compute_the_same_function(radix_type, size):
    sample = range(0, size, size // 2000 + 1)
    with_tables = radix_type(KEY, size, b"int", tables=True)
    with_hashes = radix_type(KEY, size, b"int", tables=False)

    assert [with_tables(i) for i in sample] == [with_hashes(i) for i in sample]


def reference_aes_permutation(key: bytes, size: int, tweak: bytes, index: int) -> int:
    """AesRadixPermutation's definition, written out a number and a round at a time (no tables, no runs)."""
    context = len(tweak).to_bytes(4, "little") + tweak + size.to_bytes(8, "little")
    round_key = hashlib.blake2b(context, key=key, digest_size=32, person=b"uniquerand-v5a").digest()
    cipher = Cipher(algorithms.AES(round_key), modes.ECB())
    a = math.isqrt(size - 1) + 1
    b = -(-size // a)

    def f(r: int, x: int) -> int:
        block = cipher.encryptor().update(struct.pack("<QQ", x, r))
        return struct.unpack("<Q", block[:8])[0]

    value = index
    while True:
        left, right = divmod(value, b)
        for r in range(0, 10, 2):
            left = (left + f(r, right)) % a
            right = (right + f(r + 1, left)) % b
        value = left * b + right
        if value < size:
            return value


# Whole spaces with tables and with AES calls, where some values need a second pass (a * b - size: 100 of
# 10201 for 10101, 10 of 100 for 91), then a run of a large int space and of the floats.
@pytest.mark.parametrize(
    ("size", "tweak", "start", "count", "tables"),
    [
        (91, b"", 0, 91, True),
        (91, b"", 0, 91, False),
        (10101, b"int", 0, 10101, True),
        (10101, b"int", 0, 10101, False),
        (10**9 + 7, b"int", 10**9 - 200, 200, True),
        (10**14, FLOAT_TWEAK, 2**40, 200, False),
    ],
)
def test_aes_permutation_is_its_definition(size, tweak, start, count, tables):
    permutation = AesRadixPermutation(KEY, size, tweak, tables=tables)

    expected = [reference_aes_permutation(KEY, size, tweak, i) for i in range(start, start + count)]

    assert permutation.many(start, count) == expected


@RADIX_TYPES
def test_tables_of_the_int_space_take_16_bit_words(radix_type):
    permutation = radix_type(KEY, 2**32, b"int")

    assert sum(len(table) * table.itemsize for table in permutation._tables) == 10 * 2**16 * 2


# Served numbers are these values: a change re-issues numbers from every database that recorded the
# permutation. The binary values are the ones the release before the radix network served.
@pytest.mark.parametrize(
    ("permutation_type", "size", "tweak", "first"),
    [
        (BinaryFeistelPermutation, 1000, b"", [143, 534, 287, 657]),
        (BinaryFeistelPermutation, 2**32, INT_TWEAK, [2142116720, 1279785912, 3650029357, 2969700884]),
        (
            BinaryFeistelPermutation,
            10**14,
            FLOAT_TWEAK,
            [30678772466696, 50845911623898, 40433065275217, 24540365117539],
        ),
        (RadixFeistelPermutation, 1000, b"", [825, 220, 898, 244]),
        (RadixFeistelPermutation, 2**32, INT_TWEAK, [503839794, 1716851480, 1341948705, 418418473]),
        (RadixFeistelPermutation, 10**14, FLOAT_TWEAK, [1608349891774, 64770857523061, 91532317277061, 46328162193220]),
        (AesRadixPermutation, 1000, b"", [613, 127, 913, 19]),
        (AesRadixPermutation, 2**32, INT_TWEAK, [2972905000, 3858644364, 2337238438, 2459609585]),
        (AesRadixPermutation, 10**14, FLOAT_TWEAK, [63354201239443, 71698067540455, 38319973583815, 26879173001476]),
    ],
    ids=[
        "binary-1000",
        "binary-int",
        "binary-float",
        "radix-1000",
        "radix-int",
        "radix-float",
        "aes-1000",
        "aes-int",
        "aes-float",
    ],
)
def test_permutation_values_never_change(permutation_type, size, tweak, first):
    assert permutation_type(KEY, size, tweak).many(0, 4) == first


@PERMUTATION_TYPES
def test_permutation_is_fixed_by_key_size_and_tweak(permutation_type):
    size = 4097
    first = permutation_type(KEY, size).many(0, size)

    assert permutation_type(KEY, size).many(0, size) == first
    assert permutation_type(OTHER_KEY, size).many(0, size) != first
    assert permutation_type(KEY, size, b"float").many(0, size) != first
    # Not the identity, nor close to it: the order carries no trace of the counter.
    assert sum(a == b for a, b in enumerate(first)) < 20


@pytest.mark.parametrize(
    ("one", "other"),
    [(BinaryFeistelPermutation, RadixFeistelPermutation), (RadixFeistelPermutation, AesRadixPermutation)],
    ids=["binary-radix", "radix-aes"],
)
def test_permutations_of_one_key_differ(one, other):
    size = 4096
    ones = one(KEY, size).many(0, size)
    others = other(KEY, size).many(0, size)

    assert sum(a == b for a, b in zip(ones, others, strict=True)) < 20


@PERMUTATION_TYPES
@pytest.mark.parametrize("tables", [True, False])
def test_permutation_many_matches_single_calls(permutation_type, tables):
    # Every index of a space of 1000, so that the values that need a second pass are compared too.
    permutation = permutation_type(KEY, 1000, tables=tables)

    assert permutation.many(0, 1000) == [permutation(i) for i in range(1000)]


@PERMUTATION_TYPES
@pytest.mark.parametrize("size", [10**14, 2**54])
def test_permutation_of_a_large_space_stays_inside_it(permutation_type, size):
    values = permutation_type(KEY, size).many(size - 500, 500)

    assert len(set(values)) == 500
    assert all(0 <= value < size for value in values)


@PERMUTATION_TYPES
@pytest.mark.parametrize(
    ("key", "size", "message"),
    [(b"short", 10, "32 bytes"), (KEY, 0, "at least 1"), (KEY, 2**54 + 1, "at most 2\\*\\*54")],
)
def test_permutation_rejects_bad_arguments(permutation_type, key, size, message):
    with pytest.raises(ValueError, match=message):
        permutation_type(key, size)


@PERMUTATION_TYPES
@pytest.mark.parametrize(("start", "count"), [(-1, 1), (0, 11), (10, 1)])
def test_permutation_rejects_indexes_outside_the_space(permutation_type, start, count):
    with pytest.raises(ValueError, match="not inside"):
        permutation_type(KEY, 10).many(start, count)
