"""Structured logs: one parseable line per event, and never a served number at INFO or above."""

from __future__ import annotations

import logging
import shlex

import pytest

from tests.support import STAGE_NAMES
from uniquerand.logs import LogfmtFormatter, event


@pytest.fixture
def records():
    """Every record of the `uniquerand` loggers (they do not propagate to the root logger)."""
    captured: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = captured.append
    logger = logging.getLogger("uniquerand")
    logger.addHandler(handler)
    yield captured
    logger.removeHandler(handler)


def parse(line: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in shlex.split(line))


def test_an_event_is_one_logfmt_line():
    logger = logging.getLogger("uniquerand.test")
    record = logger.makeRecord(
        logger.name, logging.WARNING, __file__, 1, "refill_failed", (), None,
        extra={"event": "refill_failed", "fields": {"shard": "int_shard_0.db", "error": 'disk "full"\nnow'}},
    )  # fmt: skip
    line = LogfmtFormatter().format(record)
    assert "\n" not in line
    fields = parse(line)
    assert fields["level"] == "warning"
    assert fields["event"] == "refill_failed"
    assert fields["shard"] == "int_shard_0.db"
    assert fields["error"] == 'disk "full"\\nnow'


def test_store_errors_are_logged_as_events(make_app, records):
    client = make_app(INT_MIN=1, INT_MAX=1).test_client()
    client.get("/v3/random")
    client.get("/v3/random")
    [record] = [record for record in records if getattr(record, "event", "") == "store_error"]
    assert record.levelno == logging.WARNING
    assert record.fields["code"] == "space_exhausted"
    assert record.fields["path"] == "/v3/random"


def test_no_served_number_appears_in_the_logs(make_app, records):
    client = make_app(INT_MIN=10**9, INT_MAX=10**9 + 200).test_client()
    served = []
    for stage in STAGE_NAMES:
        for _ in range(30):
            response = client.get(f"/{stage}/random")
            if response.status_code == 200:
                served.append(str(response.get_json()["number"]))
    event(logging.getLogger("uniquerand.test"), "marker", fields_seen=len(served))
    lines = [LogfmtFormatter().format(record) for record in records if record.levelno >= logging.INFO]
    assert any("marker" in line for line in lines)
    assert served
    assert not [number for number in served if any(number in line for line in lines)]


def test_refills_and_leases_are_logged_as_events(make_app, records):
    app = make_app()
    app.extensions["uniquerand"]["stores"]["v4"].fill_shards(50)
    app.test_client().get("/v5/random")
    named = [(getattr(record, "event", None), record.fields) for record in records if hasattr(record, "fields")]
    started = {fields["shard"] for name, fields in named if name == "refill_started"}
    assert started == {"int_shard_0.db", "int_shard_1.db", "float_shard_0.db", "float_shard_1.db"}
    assert {fields["added"] for name, fields in named if name == "refill_finished"} == {50}
    assert ("lease_taken", {"stage": "v5", "kind": "int", "size": 1000}) in named
