"""/v5 at the end of a space, under real gunicorn with several workers and other CPU load on the machine:
`space_exhausted` only once no live worker can serve a number; meanwhile `held_elsewhere` (503, Retry-After)
and the numbers reach the client that retries. A worker killed with `kill -9` takes its held numbers with it,
and the others still reach `space_exhausted` in a bounded time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager

import pytest

from tests.support import GunicornServer, get
from tests.v4_support import rows as read_rows


@contextmanager
def cpu_load(seconds: float = 120.0):
    """Busy processes, one per core, bounded in time and stopped by PID: the failure this guards against
    showed only on a loaded machine (a worker's lease outliving the others' requests)."""
    burners = [
        subprocess.Popen(
            [sys.executable, "-c", f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"]
        )
        for _ in range(os.cpu_count() or 2)
    ]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait(10)


def space_env(high: int, block: int | None = None) -> dict[str, str]:
    env = {"UNIQUERAND_INT_MIN": "1", "UNIQUERAND_INT_MAX": str(high)}
    if block is not None:
        env["UNIQUERAND_V5_BLOCK_SIZE"] = str(block)
    return env


def ask_until_exhausted(servers: list[GunicornServer], deadline: float = 90.0, on_the_way=None) -> list[int]:
    """One client, one request at a time on fresh connections (round-robin over `servers`), until every
    server says `space_exhausted`. `held_elsewhere` is retried; any other answer fails the test."""
    numbers: list[int] = []
    exhausted: set[int] = set()
    codes: Counter = Counter()
    end = time.monotonic() + deadline
    turn = 0
    while len(exhausted) < len(servers):
        assert time.monotonic() < end, f"no end within {deadline}s: {len(numbers)} numbers, answers {dict(codes)}"
        server = servers[turn % len(servers)]
        turn += 1
        status, body, headers = get(server.port, "/v5/random", timeout=30)
        if status == 200:
            numbers.append(body["number"])
            exhausted.discard(server.port)
            if on_the_way:
                on_the_way(numbers)
            continue
        codes[body.get("code")] += 1
        if body.get("code") == "held_elsewhere":
            assert status == 503 and headers["retry-after"] == "1", (status, headers)
            time.sleep(0.01)  # a real client waits Retry-After; a test need not
            continue
        assert (status, body.get("code")) == (503, "space_exhausted"), (status, body)
        assert "retry-after" not in headers
        exhausted.add(server.port)
    return numbers


@pytest.mark.parametrize("high", [50, 1000])
def test_one_client_receives_every_number_of_the_space_exactly_once(make_server, high):
    # The default block size: every lease is larger than the space, capped by its end.
    server = make_server(env=space_env(high), workers=3)
    with cpu_load():
        numbers = ask_until_exhausted([server])
    assert Counter(numbers).most_common(1)[0][1] == 1
    assert sorted(numbers) == list(range(1, high + 1))


def test_two_servers_on_one_folder_serve_the_space_to_its_last_number(make_server):
    first = make_server(env=space_env(300, block=10), workers=2)
    second = make_server(env=space_env(300, block=10), workers=2)
    with cpu_load():
        numbers = ask_until_exhausted([first, second])
    assert sorted(numbers) == list(range(1, 301))


def open_lease_holders(instance_path) -> list[int]:
    """The pids of the processes the counter database names as holding open int leases (read from the file)."""
    rows = read_rows(instance_path / "v5" / "counters.db", "SELECT holder FROM leases WHERE kind = 'int' AND open = 1")
    return sorted({int(holder.rsplit(":", 2)[1]) for (holder,) in rows})


def test_a_worker_killed_holding_numbers_takes_them_and_the_others_still_reach_the_end(make_server, instance_path):
    # Blocks of 10 in a space of 1000: the last 160 are leased a request at a time, so before that every
    # worker holds a block (and maybe the next one, leased ahead).
    server = make_server(env=space_env(1000, block=10), workers=3)
    killed: list[int] = []

    def kill_one_holder(numbers: list[int]) -> None:
        if len(numbers) == 400 and not killed:
            holders = [pid for pid in open_lease_holders(instance_path) if pid in server.worker_pids()]
            assert holders, "no worker holds numbers to lose"
            os.kill(holders[0], signal.SIGKILL)
            killed.append(holders[0])

    started = time.monotonic()
    numbers = ask_until_exhausted([server], on_the_way=kill_one_holder)
    assert killed and time.monotonic() - started < 90
    assert len(numbers) == len(set(numbers))
    assert all(1 <= number <= 1000 for number in numbers)
    # What the killed worker held is lost, never served by another: at most its block and the next one.
    assert 1000 - 20 <= len(numbers) <= 1000
