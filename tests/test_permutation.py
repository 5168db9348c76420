"""The keyed Feistel permutation: a bijection of [0, N) for every N, fixed by its key, the same on both paths."""

from __future__ import annotations

import pytest

from uniquerand.permutation import FeistelPermutation

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
# Powers of 4 and the sizes just above them, where the domain is nearly 4 times the space and
# cycle-walking runs longest; 1 and 2 are the degenerate ends.
SIZES = [1, 2, 3, 4, 5, 15, 16, 17, 64, 65, 256, 257, 1000, 1024, 1025, 4096, 4097]


@pytest.mark.parametrize("tables", [True, False], ids=["tables", "hashes"])
@pytest.mark.parametrize("size", SIZES)
def test_permutation_is_a_bijection(size, tables):
    permutation = FeistelPermutation(KEY, size, tables=tables)

    assert sorted(permutation.many(0, size)) == list(range(size))


def test_permutation_tables_and_hashes_compute_the_same_function():
    size = 4**9 + 1
    sample = range(0, size, 97)
    with_tables = FeistelPermutation(KEY, size, tables=True)
    with_hashes = FeistelPermutation(KEY, size, tables=False)

    assert [with_tables(i) for i in sample] == [with_hashes(i) for i in sample]


def test_permutation_is_fixed_by_key_size_and_tweak():
    size = 4097
    first = FeistelPermutation(KEY, size).many(0, size)

    assert FeistelPermutation(KEY, size).many(0, size) == first
    assert FeistelPermutation(OTHER_KEY, size).many(0, size) != first
    assert FeistelPermutation(KEY, size, b"float").many(0, size) != first
    # Not the identity, nor close to it: the order carries no trace of the counter.
    assert sum(a == b for a, b in enumerate(first)) < 20


def test_permutation_many_matches_single_calls():
    permutation = FeistelPermutation(KEY, 1000)

    assert permutation.many(10, 5) == [permutation(i) for i in range(10, 15)]


def test_permutation_of_a_large_space_stays_inside_it():
    size = 10**14
    values = FeistelPermutation(KEY, size).many(size - 500, 500)

    assert len(set(values)) == 500
    assert all(0 <= value < size for value in values)


@pytest.mark.parametrize(
    ("key", "size", "message"),
    [(b"short", 10, "32 bytes"), (KEY, 0, "at least 1"), (KEY, 2**54 + 1, "at most 2\\*\\*54")],
)
def test_permutation_rejects_bad_arguments(key, size, message):
    with pytest.raises(ValueError, match=message):
        FeistelPermutation(key, size)


@pytest.mark.parametrize(("start", "count"), [(-1, 1), (0, 11), (10, 1)])
def test_permutation_rejects_indexes_outside_the_space(start, count):
    with pytest.raises(ValueError, match="not inside"):
        FeistelPermutation(KEY, 10).many(start, count)
