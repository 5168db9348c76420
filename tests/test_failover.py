"""PostgreSQL that loses its primary, under load: two app servers draw from /v3, /v4 and /v5 on a three-node
Patroni cluster (tests/patroni.py, `synchronous_mode: true`) through one multi-host URL
(`target_session_attrs=read-write`), while the primary's host is lost (kill -9 of its Patroni and its
postmaster), its postmaster alone is killed, or Patroni switches over. Afterwards: no number was served twice
(tests/history.py checks every 200), every stage answers 200 again within 30 s of the new primary taking over,
without restarting the app, and /v5's lost numbers (leased or drawn, never answered) stay within the rule of
docs/deploying.md: per worker and type, the lease it serves from and the one it fetched ahead (both held at
the end), and one lease whose write was cut off in flight, each at most the largest lease.

The slow tier (`scripts/test --slow`): a cluster takes about 15 s to start, and each fault about 40 s.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tests.history import KINDS, History
from tests.patroni import PatroniCluster
from tests.postgres import give_key, start, start_pair
from tests.support import get

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

STAGES = ("v3", "v4", "v5")
BLOCK = 20
# Leases may grow to GROWTH blocks (a space of 1,000,000 is large enough for that: docs/stages.md#leases).
GROWTH = 4
WORKERS = 2
SETTINGS = {
    "INT_MIN": 1,
    "INT_MAX": 1_000_000,
    "FLOAT_MIN": 0,
    "FLOAT_MAX": 1000,
    "FLOAT_DECIMALS": 3,
    "MAX_COUNT": 50,
    "V4_SHARD_SIZE": 200,
    "V4_REFILL_AT": 100,
    "V5_BLOCK_SIZE": BLOCK,
    "V5_LEASE_GROWTH": GROWTH,
    "LOCK_TIMEOUT": 2,
}
# Every stage answers 200 again within this many seconds of the new primary taking over.
RECOVERY = 30


@pytest.fixture(scope="module")
def patroni():
    # Not below pytest's temporary folder (0700): the user postgres must reach its node's folder.
    base = Path(tempfile.gettempdir()) / f"uniquerand-test-patroni-{os.geteuid()}"
    base.mkdir(exist_ok=True)
    base.chmod(0o755)
    cluster = PatroniCluster(base)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def new_database(cluster: PatroniCluster, name: str) -> str:
    with psycopg.connect(cluster.url(), autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return cluster.url(name)


def load(history: History, ports: list[int], phase: list[str], stop: threading.Event) -> list[threading.Thread]:
    """Requests to every stage from both servers until `stop`, tagged with the phase current when sent."""

    def run(port: int, offset: int) -> None:
        index = offset
        while not stop.is_set():
            stage, kind = STAGES[index % 3], KINDS[(index // 3) % 2]
            history.request(port, stage, kind, phase[0], 3 if index % 5 == 4 else None, timeout=10)
            index += 1

    threads = [threading.Thread(target=run, args=(port, i), daemon=True) for port in ports for i in range(4)]
    for thread in threads:
        thread.start()
    return threads


def recovered_at(ports: list[int], deadline: float) -> dict[str, float]:
    """When each stage first answered 200 on every server (monotonic time), polling until `deadline`."""
    pending = {(port, stage) for port in ports for stage in STAGES}
    first: dict[str, float] = {}
    while pending and time.monotonic() < deadline:
        for port, stage in sorted(pending):
            try:
                status = get(port, f"/{stage}/random", timeout=5)[0]
            except OSError:
                continue
            if status == 200:
                pending.discard((port, stage))
                if not any(stage == s for _, s in pending):
                    first[stage] = time.monotonic()
        time.sleep(0.1)
    return first


def v5_lost(servers, history: History) -> dict[str, int]:
    """Per type, /v5 numbers taken from the counter (leased) and never answered: the counter less the 200s."""
    counter = {kind: body["counter"] for kind, body in servers[0].get("/v5/stats")[1]["types"].items()}
    ok = [op for op in history.of(stage="v5") if op.outcome == "ok"]
    served = {kind: sum(len(op.numbers) for op in ok if op.kind == kind) for kind in KINDS}
    return {kind: counter[kind] - served[kind] for kind in KINDS}


@pytest.mark.parametrize("fault", ["lose_primary_host", "kill_postmaster", "switchover"])
def test_the_stages_survive_losing_the_primary(patroni, servers, tmp_path: Path, fault: str):
    patroni.revive()  # a host an earlier test lost comes back, as a replica
    old = patroni.wait_healthy()
    url = new_database(patroni, f"failover_{fault}")
    a, b = start_pair(servers, tmp_path, url, SETTINGS)
    ports = [a.port, b.port]
    history, phase, stop = History(), ["before"], threading.Event()
    threads = load(history, ports, phase, stop)
    try:
        time.sleep(4)
        phase[0] = "during"
        if fault == "lose_primary_host":
            patroni.lose_host(old)
            new = patroni.wait_new_leader(old)
        elif fault == "kill_postmaster":
            # Patroni restarts it in place (crash recovery), or another node takes over.
            new = patroni.wait_restarted_leader(old, patroni.kill_postmaster(old))
        else:
            candidate = patroni.sync_standby()
            patroni.switchover(old, candidate)
            new = patroni.wait_new_leader(old)
        promoted = time.monotonic()
        first = recovered_at(ports, promoted + RECOVERY)
        phase[0] = "after"
        time.sleep(3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(20)
    summary = f"{fault}: leader {old} -> {new}\n{history.summary()}"
    history.check()
    late = {stage: round(first[stage] - promoted, 1) for stage in first}
    assert set(first) == set(STAGES), f"not serving again within {RECOVERY} s of the new primary: {late}\n{summary}"
    after = [op for op in history.of("after") if op.outcome != "ok"]
    assert not after, f"{len(after)} requests failed after the recovery, e.g. {after[:3]}\n{summary}"
    # Per worker (two servers) and type: its lease and the one fetched ahead, held at the end, and one lease
    # whose write was cut off in flight (burned).
    bound = 2 * WORKERS * 3 * BLOCK * GROWTH
    lost = v5_lost([a, b], history)
    assert all(0 <= n <= bound for n in lost.values()), f"/v5 lost {lost}, rule: at most {bound}\n{summary}"
    print(f"{summary}\nrecovered after promotion (s): {late}; /v5 lost per type: {lost} (bound {bound})")


def test_asynchronous_standbys_are_refused_unless_allowed(patroni, servers, tmp_path: Path):
    """With Patroni's synchronous_mode off the standbys stream asynchronously: a failover could lose served
    numbers, so /readyz answers 503 (the stages would refuse to set up), unless ASYNC_REPLICATION=warn."""
    patroni.revive()
    patroni.wait_healthy()
    url = new_database(patroni, "replication")
    refusing, _ = start_pair(servers, tmp_path, url, SETTINGS)
    assert refusing.get("/readyz")[0] == 200
    give_key(refusing, tmp_path / "warn")
    allowing = start(servers, tmp_path / "warn", url, {**SETTINGS, "ASYNC_REPLICATION": "warn"})
    patroni.set_synchronous_mode(False)
    try:
        deadline = time.monotonic() + 60
        while (status := refusing.get("/readyz"))[0] == 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        status, body, _ = status
        assert status == 503 and set(body["codes"].values()) == {"store_unavailable"}, body
        assert "asynchronous standbys" in body["stages"]["v3"] and "ASYNC_REPLICATION=warn" in body["stages"]["v3"]
        assert allowing.get("/readyz")[0] == 200
        assert allowing.get("/v3/random")[0] == 200
    finally:
        patroni.set_synchronous_mode(True)
    deadline = time.monotonic() + 60
    while refusing.get("/readyz")[0] != 200:
        assert time.monotonic() < deadline, "never ready again once replication was synchronous again"
        time.sleep(0.5)
