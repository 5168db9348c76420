"""`flask bench` end to end: a second per row against real gunicorn, JSON rows checked, never timings."""

from __future__ import annotations

import glob
import itertools
import json
import shutil
import socket
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.postgres import database_for
from tests.support import STAGE_NAMES
from uniquerand.bench.capacity import Capacity, ceilings
from uniquerand.bench.cluster import default_base
from uniquerand.bench.results import Ledger, Row, median_rows

SMALL = [
    *("--duration", "1", "--warmup", "0", "--baseline", "once"),
    *("--concurrency", "4", "--workers", "2", "--threads", "2"),
]


def bench(runner, tmp_path: Path, *args: str) -> tuple[object, dict]:
    output = tmp_path / "results"
    result = runner.invoke(args=["bench", *SMALL, "--output", str(output), *args])
    documents = sorted(output.glob("bench-*.json"))
    return result, json.loads(documents[-1].read_text()) if documents else {}


def assert_sane(row: dict) -> None:
    assert row["duplicates"] == 0
    assert row["bad_bodies"] == 0
    assert set(row["statuses"]) == {"200"}, row
    assert row["requests"] > 0 and row["requests_per_s"] > 0
    assert row["ratio_to_healthz"] > 0
    latency = row["latency_ms"]
    assert 0 <= latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert row["client_cpu_percent"] >= 0 and row["server_cpu_percent"] >= 0
    if row["stage"] != "healthz":
        assert row["numbers"] == row["requests"] * (row["count"] or 1)


def test_bench_measures_every_stage_after_a_prefill(runner, tmp_path):
    result, document = bench(runner, tmp_path, "--prefill", "20", "--types", "int", "--count", "3")

    assert result.exit_code == 0, result.output
    rows = document["rows"]
    assert document["settings"]["generator"] == ("wrk" if shutil.which("wrk") else "python")
    labels = [row["label"] for row in rows]
    assert labels[0] == "/healthz" and rows[0]["ratio_to_healthz"] == 1.0
    # --baseline once: every row divides by the level's /healthz row.
    assert {row["healthz_ok_per_s"] for row in rows} == {rows[0]["ok_per_s"]}
    assert all(row["healthz_around"] is None for row in rows)
    assert {f"/{stage} int" for stage in STAGE_NAMES} <= set(labels)
    assert "/v3 int x3" in labels and "/v1 int x3" not in labels  # /v1 takes no count
    for row in rows:
        assert row["prefill"] == 20
        assert row["worker_peak_mib_max"] > 0 and row["worker_peak_mib_sum"] >= row["worker_peak_mib_max"]
        assert_sane(row)
    assert (tmp_path / "results" / Path(result.output.split("chart: ")[1].strip()).name).read_bytes()[:4] == b"\x89PNG"
    assert "numbers already issued per stage and type: 20" in result.output


@pytest.mark.slow
def test_bench_python_client(runner, tmp_path):
    result, document = bench(
        runner, tmp_path, "--client", "python", "--stages", "v3", "--types", "float", "--count", "2", "--no-chart",
        "--baseline", "each",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert document["settings"]["generator"] == "python"
    rows = document["rows"]
    assert [row["label"] for row in rows] == ["/healthz", "/v3 float", "/v3 float x2"]
    for row in rows:
        assert_sane(row)
        assert row["ratio_to_healthz"] == pytest.approx(row["ok_per_s"] / row["healthz_ok_per_s"], abs=2e-3)
    # Each stage row divides by the mean of the /healthz runs just before and just after it; the run after one
    # row is the run before the next, and the first one before is the level's /healthz row.
    assert rows[0]["healthz_ok_per_s"] == rows[0]["ok_per_s"] and rows[0]["healthz_around"] is None
    first, second = rows[1]["healthz_around"], rows[2]["healthz_around"]
    assert first[0] == rows[0]["ok_per_s"] and first[1] == second[0]
    for row in rows[1:]:
        assert row["healthz_ok_per_s"] == pytest.approx(sum(row["healthz_around"]) / 2, abs=0.1)


@pytest.mark.parametrize("baseline", [pytest.param("once", marks=pytest.mark.slow), "each"])
def test_bench_repeat_runs_every_row_each_round_and_shows_the_median(runner, tmp_path, baseline):
    result, document = bench(
        runner, tmp_path, "--client", "python", "--stages", "v5", "--types", "int", "--no-chart", "--repeat", "3",
        "--baseline", baseline,
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    rows, medians = document["rows"], document["medians"]
    # "each": a later round starts from the previous round's last /healthz run, so its own /healthz row is left out.
    healthz_rounds = (1, 2, 3) if baseline == "once" else (1,)
    expected = [
        (label, n) for n in (1, 2, 3) for label in ("/healthz", "/v5 int") if label != "/healthz" or n in healthz_rounds
    ]
    assert [(row["label"], row["round"]) for row in rows] == expected
    for row in rows:
        assert_sane(row)  # the ledger spans the rounds: a number served in two rounds is a duplicate
    [healthz, v5] = medians
    rates = sorted(row["ok_per_s"] for row in rows if row["label"] == "/healthz")
    assert healthz["ok_per_s"] == rates[(len(rates) - 1) // 2] and healthz["ratio_range"] is None
    ratios = sorted(row["ratio_to_healthz"] for row in rows if row["label"] == "/v5 int")
    assert v5["label"] == "/v5 int" and v5["ratio_to_healthz"] == ratios[1]
    assert v5["ratio_range"] == [ratios[0], ratios[2]]
    assert "round 3/3" in result.output
    if baseline == "each":
        stage_rows = [row for row in rows if row["label"] == "/v5 int"]
        for before, after in itertools.pairwise(stage_rows):
            assert after["healthz_around"][0] == before["healthz_around"][1]


def test_bench_measures_a_running_server_given_by_url(runner, tmp_path, make_server):
    server = make_server(workers=2, threads=2)

    result, document = bench(
        runner,
        tmp_path,
        "--url",
        f"http://localhost:{server.port}",
        "--client",
        "python",
        "--stages",
        "v3",
        "--types",
        "int",
        "--warmup",
        "1",
        "--no-chart",
    )

    assert result.exit_code == 0, result.output
    assert document["settings"]["servers"][0]["workers"] == 2  # found through the listening socket
    for row in document["rows"]:
        assert row["prefill"] is None
        assert row["worker_peak_mib_max"] > 0
        assert_sane(row)
    # The warm-up's numbers were issued but are not counted in the row: far more than the few requests (at
    # most one per client) still in flight when a measured window closes.
    measured = sum(row["numbers"] for row in document["rows"] if row["stage"] == "v3")
    assert server.get("/v3/stats")[1]["types"]["int"]["issued"] - measured > 50


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "http://example.com:8000"], "127.0.0.1"),
        (["--url", "http://127.0.0.1:1", "--prefill", "10"], "--prefill"),
        (["--stages", "v0"], "Unknown stage"),
        (["--url", "http://127.0.0.1:1", "--postgres"], "--postgres and --database-url need the bench's own"),
        (["--postgres", "--database-url", "postgresql://127.0.0.1:1/x"], "either"),
        (["--cost"], "--cost measures the PostgreSQL rows"),
    ],
)
def test_bench_refuses_what_it_cannot_do(runner, tmp_path, args, message):
    result, _ = bench(runner, tmp_path, "--client", "python", *args)

    assert result.exit_code == 1
    assert message in result.output


def test_ledger_counts_a_number_seen_twice_within_and_across_rows():
    ledger = Ledger()

    assert ledger.record(("v3", "int"), [1, 2, 3]) == 0
    assert ledger.record(("v3", "int"), [4, 4, 5]) == 1
    assert ledger.record(("v3", "int"), [1, 6]) == 1
    assert ledger.record(("v3", "float"), [1.0, 2.5]) == 0


def test_median_rows_pick_each_rows_middle_round_and_count_every_rounds_duplicates():
    template = Row(
        prefill=0, label="", stage="v3", type="int", count=None, path="/v3/random?type=int", generator="wrk",
        duration_s=1.0, requests=1, requests_per_s=1.0, ok_per_s=1.0, numbers=1, numbers_per_s=1.0,
        ratio_to_healthz=None, healthz_ok_per_s=1.0, healthz_around=None, latency_ms={}, statuses={},
        socket_errors={}, bad_bodies=0, error_codes={}, duplicates=0, worker_peak_mib_max=None,
        worker_peak_mib_sum=None, server_cpu_percent=0.0, client_cpu_percent=0.0, idle_wait_s=0.0,
    )  # fmt: skip
    measured = [("/v3 int", 1, 0.4, 0), ("/v5 int", 1, 0.9, 0), ("/v3 int", 2, 0.6, 2), ("/v5 int", 2, 0.8, 0)]
    measured += [("/v3 int", 3, 0.5, 0), ("/v4 int", 3, 0.45, 0)]
    rows = [
        replace(template, label=label, round=n, ratio_to_healthz=ratio, duplicates=duplicates)
        for label, n, ratio, duplicates in measured
    ]

    medians = median_rows(rows)

    assert [(row.label, row.round, row.ratio_to_healthz, row.ratio_range, row.duplicates) for row in medians] == [
        ("/v3 int", 3, 0.5, [0.4, 0.6], 2),  # round 2's duplicates are not hidden by round 3's median
        ("/v5 int", 2, 0.8, [0.8, 0.9], 0),  # an even number of rounds: the lower middle one
        ("/v4 int", 3, 0.45, None, 0),  # one round: its own median, no range
    ]


@pytest.mark.slow
def test_bench_measures_the_postgres_stages_beside_the_file_ones(runner, tmp_path, postgres):
    url = database_for(tmp_path / "bench")

    result, document = bench(
        runner, tmp_path, "--database-url", url, "--stages", "v3,v4,v5", "--types", "int", "--count", "3",
        "--prefill", "30", "--no-chart",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    labels = [row["label"] for row in document["medians"]]
    # Side by side: each row of the server on PostgreSQL right after the same row of the main one.
    assert labels == [
        "/healthz", "/healthz-pg", "/v3 int", "/v3-pg int", "/v4 int", "/v4-pg int", "/v5 int", "/v5-pg int",
        "/v3 int x3", "/v3-pg int x3", "/v4 int x3", "/v4-pg int x3", "/v5 int x3", "/v5-pg int x3",
    ]  # fmt: skip
    rows = document["rows"]
    healthz = {row["server"]: row["ok_per_s"] for row in rows if row["stage"] == "healthz"}
    for row in rows:
        assert row["prefill"] == 30
        assert_sane(row)
        # --baseline once: each server's rows divide by that server's /healthz.
        assert row["healthz_ok_per_s"] == healthz[row["server"]]
    servers = document["settings"]["servers"]
    assert [server["on"] for server in servers] == ["", "pg"] and "database" in servers[1]
    assert document["settings"]["database"]["fsync"] == "on"
    assert "cost" not in document
    # The database is left as the bench found it: the stores' tables are dropped.
    with psycopg.connect(url, connect_timeout=10) as connection:
        assert connection.execute("SELECT to_regclass('uniquerand_v3_int')").fetchone() == (None,)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.skipif(not glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reason="no PostgreSQL server binaries")
def test_bench_starts_a_throwaway_cluster_measures_the_cost_and_removes_it(runner, tmp_path):
    """One run for both (the cost's snapshots wait for PostgreSQL to publish a backend's last statistics,
    about 10 s after it went idle): --postgres, then --cost of the PostgreSQL row."""
    before = set(default_base("bench").glob("cluster-*"))

    result, document = bench(runner, tmp_path, "--postgres", "--cost", "--stages", "v3", "--types", "int", "--no-chart")

    assert result.exit_code == 0, result.output
    assert [row["label"] for row in document["medians"]] == ["/healthz", "/healthz-pg", "/v3 int", "/v3-pg int"]
    for row in document["rows"]:
        assert_sane(row)
    database = document["settings"]["database"]
    assert database["throwaway_cluster"] and database["pg_stat_statements"] and database["fsync"] == "on"
    capacity = document["cost"]["capacity"]
    assert capacity["commits_per_s"] > 0 and capacity["hot_row_updates_per_s"] > 0
    assert capacity["wal_bytes_per_s"] > 0
    [cost] = document["cost"]["rows"]
    assert cost["label"] == "/v3-pg int" and cost["numbers"] > 0 and cost["duplicates"] == 0
    per_1000 = cost["per_1000"]
    # Every number is a row inserted and committed: statements, commits, WAL and tuples written for each.
    assert per_1000["statements"] > 0 and per_1000["commits"] > 0 and per_1000["wal_bytes"] > 0
    assert per_1000["wal_records"] > 0 and per_1000["tuples_written"] > 0
    assert per_1000["server_cpu_ms"] is None or per_1000["server_cpu_ms"] >= 0
    assert cost["limits"]["commits"] > 0 and cost["limits"]["wal"] > 0
    assert cost["ceiling_numbers_per_s"] == min(cost["limits"].values()) > 0
    assert cost["host_numbers_per_s"] > 0 and cost["hosts"] > 0
    assert cost["connections"] > 0 and cost["hosts_by_connections"] > 0
    assert "PostgreSQL cost per 1000 numbers served" in result.output
    assert "database server capacity" in result.output
    port = urlsplit(database["url"]).port
    # Stopped and removed: nothing listens on its port, no folder of it is left.
    assert set(default_base("bench").glob("cluster-*")) <= before
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_bench_leaves_a_database_with_uniquerand_tables_alone(runner, tmp_path, postgres):
    url = database_for(tmp_path / "bench")
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as connection:
        connection.execute("CREATE TABLE uniquerand_v3_int (code bigint PRIMARY KEY)")
        connection.execute("INSERT INTO uniquerand_v3_int VALUES (7)")

    result, _ = bench(runner, tmp_path, "--database-url", url, "--client", "python")

    assert result.exit_code == 1
    assert "holds uniquerand tables" in result.output
    with psycopg.connect(url, connect_timeout=10) as connection:
        assert connection.execute("SELECT code FROM uniquerand_v3_int").fetchall() == [(7,)]


def test_ceilings_take_each_limit_and_the_lowest_wins():
    capacity = Capacity(seconds=5, cores=2, commits_per_s=6000, hot_row_updates_per_s=2000, wal_bytes_per_s=50e6)
    per_1000 = {"commits": 200.0, "wal_bytes": 200_000.0, "hot_row_updates": 0.0, "server_cpu_ms": 100.0}

    limits = ceilings(per_1000, capacity)

    # 6000 commits/s at 0.2 per number; 50 MB/s at 200 bytes; 2 cores at 100 us of CPU per number.
    assert limits == {"commits": 30_000.0, "wal": 250_000.0, "cpu": 20_000.0}
    assert ceilings({**per_1000, "hot_row_updates": 1.0, "server_cpu_ms": None}, capacity)["hot row"] == 2_000_000.0


def test_bench_spaces_creates_them_and_measures_one_and_a_spread(runner, tmp_path):
    result, document = bench(runner, tmp_path, "--stages", "v5", "--types", "int", "--spaces", "3")
    assert result.exit_code == 0, result.output
    labels = [row["label"] for row in document["rows"]]
    assert "/v5 int 1 space" in labels
    if shutil.which("wrk"):
        assert "/v5 int 3 spaces" in labels
    for row in document["rows"]:
        assert_sane(row)
    created = document["settings"]["servers"][0]["spaces"]
    assert created["created"] == 3 and created["seconds"] >= 0 and created["worker_rss_kib"]["after"]
