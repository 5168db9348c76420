"""uniquerand.client against real gunicorn: it draws and verifies signed results; when the answer is lost (the
worker killed after recording it) its retry, under the same Idempotency-Key, gets the recorded numbers; when the
first attempt's worker died before recording, it waits out 409 request_in_progress by Retry-After and gets a new
answer; a 4xx is raised at once, never retried."""

from __future__ import annotations

import pytest

from tests.support import REPO, get, put_json
from uniquerand.client import Client, UniquerandError


def test_draws_creates_and_verifies(make_server):
    server = make_server(workers=2)
    client = Client(f"http://127.0.0.1:{server.port}")
    assert client.create_space("tickets", "int", 1, 5000)["name"] == "tickets"
    assert client.create_space("tickets", "int", 1, 5000)["max"] == 5000
    with pytest.raises(UniquerandError) as conflict:
        client.create_space("tickets", "int", 1, 6000)
    assert (conflict.value.status, conflict.value.code, conflict.value.attempts) == (409, "space_conflict", 1)
    assert len(client.draw("tickets", count=4)["numbers"]) == 4
    assert isinstance(client.draw()["number"], int) and isinstance(client.draw(kind="float")["number"], float)
    result = client.draw("tickets", count=3, signed=True)
    assert result["serial"] == 1 and len(result["numbers"]) == 3
    assert client.signed_draw("tickets", 1) == result
    with pytest.raises(ValueError, match="signature does not match"):
        client.verify({**result, "numbers": [1, 2, 3]})


def test_a_lost_answer_is_fetched_again_not_drawn_again(make_server):
    server = make_server(workers=2, app="tests.crash_app:app")
    client = Client(f"http://127.0.0.1:{server.port}", backoff=0.1)
    client.create_space("lost", "int", 1, 30)
    numbers = client.draw("lost", count=10, key="die-after-record-order-1")["numbers"]
    # The recorded answer is what any later request with the key gets; the space's other 20 are still there.
    assert client.draw("lost", count=10, key="die-after-record-order-1")["numbers"] == numbers
    rest = []
    for _ in range(60):
        status, body, _ = get(server.port, "/v5/spaces/lost/random")
        if status != 200:
            break
        rest.append(body["number"])
    assert not set(rest) & set(numbers) and len(set(rest)) == len(rest) <= 20


def test_a_claim_left_by_a_dead_worker_is_waited_out(make_server):
    server = make_server(workers=2, env={"UNIQUERAND_LOCK_TIMEOUT": "0.5"}, app="tests.crash_app:app")
    client = Client(f"http://127.0.0.1:{server.port}", backoff=0.1, attempts=8)
    client.create_space("orphan", "int", 1, 30)
    result = client.draw("orphan", count=2, key="die-before-record-order-2")
    assert len(result["numbers"]) == 2
    assert client.draw("orphan", count=2, key="die-before-record-order-2") == result


def test_no_4xx_is_retried(make_server):
    server = make_server(workers=1)
    client = Client(f"http://127.0.0.1:{server.port}", backoff=0.1)
    for call, code in (
        (lambda: client.draw("missing"), "space_not_found"),
        (lambda: client.draw(count=0), "invalid_parameter"),
    ):
        with pytest.raises(UniquerandError) as refused:
            call()
        assert (refused.value.code, refused.value.attempts) == (code, 1)
    client.create_space("tiny", "int", 0, 0)
    client.draw("tiny")
    with pytest.raises(UniquerandError) as exhausted:
        client.draw("tiny")
    # 503 without Retry-After: the end of the space, final.
    assert (exhausted.value.status, exhausted.value.code, exhausted.value.attempts) == (503, "space_exhausted", 1)


def test_the_operations_guide_s_retrying_function_retries_503_and_raises_what_will_not_heal(make_server, instance_path):
    """docs/operations.md's `draw`, run as written: the space `busy-once` answers 503 store_busy with Retry-After
    once (tests/crash_app.py), then serves; a space drawn to its end and an unknown path are raised at once."""
    text = (REPO / "docs" / "operations.md").read_text()
    snippet = text.split("<!-- retry-snippet -->\n```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(snippet, "operations.md", "exec"), namespace)
    draw = namespace["draw"]
    server = make_server(workers=1, app="tests.crash_app:app")
    base = f"http://127.0.0.1:{server.port}"
    for name, size in (("busy-once", 10), ("tiny", 1)):
        assert put_json(server.port, f"/v5/spaces/{name}", {"type": "int", "min": 1, "max": size})[0] == 201
    assert 1 <= draw(f"{base}/v5/spaces/busy-once/random")["number"] <= 10
    assert (instance_path / "timed-out-once").exists(), "the first attempt did not get its 503"
    assert draw(f"{base}/v5/spaces/tiny/random")["number"] == 1
    for path, message in (("/v5/spaces/tiny/random", "503 space_exhausted"), ("/v9/random", "404 not_found")):
        with pytest.raises(RuntimeError, match=message):
            draw(base + path)
