"""Every stage's numbers are spread uniformly over the configured range (chi-squared, fixed threshold)."""

from __future__ import annotations

import time

import pytest

from tests.support import STAGE_NAMES

BUCKETS = 20
# The chi-squared critical value for 19 degrees of freedom at p = 1e-6 is about 55: a fair source fails
# this test about once in a million runs, while a source skewed to one part of the range fails at once.
THRESHOLD = 60.0
SAMPLES = 2000
# /v1 has no batches and fsyncs every number: fewer samples keep the suite fast (50 per bucket).
SAMPLES_ONE_BY_ONE = 1000


def draw(client, stage: str, kind: str, wanted: int) -> list:
    """`wanted` numbers from the stage, in batches where it takes them, waiting out documented 503s."""
    numbers: list = []
    deadline = time.monotonic() + 60
    while len(numbers) < wanted and time.monotonic() < deadline:
        query = f"type={kind}" if stage == "v1" else f"type={kind}&count={min(500, wanted - len(numbers))}"
        response = client.get(f"/{stage}/random?{query}")
        if response.status_code == 503 and "Retry-After" in response.headers:
            time.sleep(0.05)
            continue
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        numbers.extend(body["numbers"] if "numbers" in body else [body["number"]])
    assert len(numbers) == wanted
    return numbers


def chi_squared(values: list, low: float, high: float) -> float:
    counts = [0] * BUCKETS
    width = (high - low) / BUCKETS
    for value in values:
        counts[min(int((value - low) / width), BUCKETS - 1)] += 1
    expected = len(values) / BUCKETS
    return sum((count - expected) ** 2 / expected for count in counts)


@pytest.mark.parametrize("stage", STAGE_NAMES)
@pytest.mark.parametrize("kind", ["int", "float"])
def test_numbers_are_uniform_over_the_range(client, stage, kind):
    samples = SAMPLES_ONE_BY_ONE if stage == "v1" else SAMPLES
    numbers = draw(client, stage, kind, samples)
    assert len(set(numbers)) == samples
    low, high = (0, 4294967296) if kind == "int" else (0, 100000000)
    assert all(low <= number < high for number in numbers)
    assert chi_squared(numbers, low, high) < THRESHOLD


def test_the_check_catches_a_skewed_source():
    skewed = [index % 1000 * 50_000 for index in range(SAMPLES)]  # only the lowest 1.2% of the range
    assert chi_squared(skewed, 0, 4294967296) > THRESHOLD
    half = [index * 1_000_000 % 2147483648 for index in range(SAMPLES)]  # only the lower half
    assert chi_squared(half, 0, 4294967296) > THRESHOLD
