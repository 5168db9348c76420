"""/metrics: Prometheus counts added up over every gunicorn worker, the stores' levels at scrape time, the
format the client's own parser reads, and never a served number."""

from __future__ import annotations

import glob
import http.client
import re
import tempfile
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support import get, hammer


def scrape(port: int) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type").startswith("text/plain; version=")
        return response.read().decode()
    finally:
        connection.close()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of the exposition, parsed by prometheus-client's own parser: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_counts_from_every_worker_add_up(make_server, tmp_path):
    stale = tmp_path / "metrics"
    stale.mkdir()
    (stale / "counter_999999.db").write_bytes(b"left by an earlier run")
    server = make_server(env={"PROMETHEUS_MULTIPROC_DIR": str(stale)}, workers=3)
    # Fresh connections spread the requests over the workers.
    paths = (
        ["/v5/random"] * 90 + ["/v5/random?count=7"] * 10 + ["/v3/random?type=float"] * 40 + ["/v2/random?type=x"] * 5
    )
    answers = hammer(server.port, paths, concurrency=12)
    assert Counter(status for status, _ in answers) == {200: 140, 422: 5}
    served = [n for status, body in answers if status == 200 for n in body.get("numbers", [body.get("number")])]
    assert len(served) == 90 + 70 + 40
    # Every worker wrote its own file; the earlier run's file was removed at start.
    written = {path.rsplit("_", 1)[1] for path in glob.glob(str(stale / "counter_*.db"))}
    assert "999999.db" not in written and len(written) == 3

    text = scrape(server.port)
    values = samples(text)
    client = ("client", "")
    assert values[("uniquerand_numbers_issued_total", (client, ("stage", "v5"), ("type", "int")))] == 160
    assert values[("uniquerand_numbers_issued_total", (client, ("stage", "v3"), ("type", "float")))] == 40
    ok = ("outcome", "ok")
    assert values[("uniquerand_requests_total", (client, ok, ("stage", "v5"), ("type", "int")))] == 100
    bad = ("outcome", "invalid_parameter")
    assert values[("uniquerand_requests_total", (client, bad, ("stage", "v2"), ("type", "none")))] == 5
    assert values[("uniquerand_request_duration_seconds_count", (("stage", "v5"),))] == 100
    # The levels are the stores' own stats.
    stats = get(server.port, "/v3/stats")[1]["types"]["float"]
    assert values[("uniquerand_numbers_remaining", (("stage", "v3"), ("type", "float")))] == stats["remaining"]
    assert all(values[("uniquerand_store_up", (("stage", stage),))] == 1 for stage in ("v1", "v2", "v3", "v4", "v5"))
    # No served number anywhere in the exposition.
    words = set(text.replace("{", " ").replace("}", " ").replace(",", " ").replace("=", " ").split())
    assert not {str(number) for number in served} & words
    assert not {repr(float(number)) for number in served} & words


def test_the_metrics_folder_is_made_and_removed_by_the_server(make_server):
    server = make_server(workers=2)
    get(server.port, "/v1/random")
    [folder] = re.findall(r"Metrics of the workers in (\S+)", server.log())
    assert Path(folder).parent == Path(tempfile.gettempdir()) and Path(folder).is_dir()
    assert len(glob.glob(f"{folder}/counter_*.db")) >= 1
    assert (
        samples(scrape(server.port))[
            ("uniquerand_numbers_issued_total", (("client", ""), ("stage", "v1"), ("type", "int")))
        ]
        == 1
    )
    server.stop()
    assert not Path(folder).exists()


def test_outcomes_and_levels_in_one_process(client):
    # The test client: no gunicorn, no multiprocess folder; one registry holds it all.
    assert client.get("/v3/random?count=2").status_code == 200
    assert client.get("/v3/random?count=0").status_code == 422
    response = client.get("/metrics")
    assert response.status_code == 200
    values = samples(response.text)
    assert values[("uniquerand_numbers_issued_total", (("client", ""), ("stage", "v3"), ("type", "int")))] == 2
    key = (
        "uniquerand_requests_total",
        (("client", ""), ("outcome", "invalid_parameter"), ("stage", "v3"), ("type", "none")),
    )
    assert values[key] == 1
    pools = [labels for name, labels in values if name == "uniquerand_v4_pool_available"]
    assert len(pools) == 4
