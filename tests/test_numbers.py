"""Number spaces: uniform CSPRNG draws, the float grid's JSON round trip, and the exact k-th free pick."""

from __future__ import annotations

import json
import random
from collections import Counter
from decimal import Decimal

import pytest

from uniquerand.numbers import FLOAT_STEPS_LIMIT, NumberSpace, kth_free


def test_draws_stay_inside_the_space():
    space = NumberSpace("int", -3, 3)
    seen = {space.draw() for _ in range(2000)}
    assert seen == set(range(-3, 4))
    assert {NumberSpace("int", 9, 9).draw() for _ in range(10)} == {9}
    assert all(0 <= NumberSpace("int", 0, 2**32 - 1).draw() < 2**32 for _ in range(1000))
    widest = NumberSpace("int", -(2**53 - 1), 2**53 - 1)
    draws = [widest.draw() for _ in range(1000)]
    assert all(widest.low <= code <= widest.high for code in draws)
    assert min(draws) < -(2**50) and max(draws) > 2**50  # the whole width is used, both signs


def test_draws_are_uniform_when_the_size_is_no_power_of_two():
    # Size 5 draws from 3 bits and rejects 5..7; folding them back (value % 5) would make 0..2 twice as likely.
    space = NumberSpace("int", 10, 14)
    counts = Counter(space.draw() for _ in range(5000))
    assert sorted(counts) == [10, 11, 12, 13, 14]
    assert all(850 < count < 1150 for count in counts.values()), counts  # 1000 each; sd 28


@pytest.mark.parametrize("decimals", [0, 1, 6, 9])
def test_float_codes_survive_json_and_rounding(decimals):
    top = FLOAT_STEPS_LIMIT
    space = NumberSpace("float", -top, top, decimals)
    rng = random.Random(7)
    codes = [0, 1, 9, 10, 99, top, top - 1, -top, *(rng.randrange(-top, top) for _ in range(20000))]
    for code in codes:
        parsed = json.loads(json.dumps(space.to_json_value(code)))
        assert round(parsed, decimals) == space.to_json_value(code)
        assert (Decimal(repr(parsed)) * 10**decimals).to_integral_value() == code
        # The neighbouring grid value is a different double: distinct codes never look alike in JSON.
        assert space.to_json_value(code + 1) != space.to_json_value(code)


def test_ints_are_json_integers():
    assert json.dumps(NumberSpace("int", 0, 10).to_json_value(7)) == "7"


@pytest.mark.parametrize(
    ("used", "k", "expected"),
    [
        ([], 0, 10),
        ([], 5, 15),
        ([10, 11, 12], 0, 13),
        ([10, 12], 1, 13),
        ([11, 13, 14], 2, 15),
        ([3, 4, 10, 20], 0, 11),
    ],
)
def test_kth_free(used, k, expected):
    assert kth_free(10, k, used) == expected


def test_kth_free_matches_brute_force():
    rng = random.Random(3)
    for _ in range(200):
        used = sorted(rng.sample(range(0, 60), rng.randrange(0, 50)))
        free = [code for code in range(0, 60) if code not in used]
        k = rng.randrange(len(free))
        assert kth_free(0, k, used) == free[k]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 1000, 2**32 + 1])
def test_draw_many_stays_inside_the_space_and_covers_it(size):
    space = NumberSpace("int", -7, -7 + size - 1)
    draws = space.draw_many(4000)
    assert len(draws) == 4000
    assert all(space.contains(code) for code in draws)
    if size <= 5:
        assert set(draws) == set(range(-7, -7 + size))


def test_draw_many_is_uniform():
    # 40 buckets of a space that is not a power of two (rejection sampling must not fold the top).
    space = NumberSpace("int", 0, 3 * 2**20 - 1)
    counts = [0] * 40
    for code in space.draw_many(40_000):
        counts[code * 40 // space.size] += 1
    chi_squared = sum((count - 1000) ** 2 / 1000 for count in counts)
    assert chi_squared < 90  # 39 degrees of freedom: about 80 at p = 1e-5
