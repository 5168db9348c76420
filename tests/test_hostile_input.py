"""Hostile input: every method on every path, junk, repeated and unknown parameters, over-long and
malformed request lines. Never a 500, and always JSON (from the app, or from gunicorn for what it refuses)."""

from __future__ import annotations

import json
import socket

import pytest

STAGES = ("v1", "v2", "v3", "v4", "v5")
PATHS = [
    "/",
    "/healthz",
    "/openapi.json",
    "/docs",
    *(f"/{stage}/{end}" for stage in STAGES for end in ("random", "stats")),
]
ALLOWED = {"GET", "HEAD", "OPTIONS"}


@pytest.fixture
def client(app, filled_shards):
    filled_shards(size=50)
    return app.test_client()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "TRACE", "BREW"])
@pytest.mark.parametrize("path", PATHS)
def test_other_methods_get_json_405_with_allow(client, path, method):
    response = client.open(path, method=method, data=b'{"count": 5}', content_type="application/json")
    assert response.status_code == 405
    assert response.content_type == "application/json"
    assert response.json["code"] == "method_not_allowed"
    assert set(response.headers["Allow"].split(", ")) == ALLOWED


@pytest.mark.parametrize("path", PATHS)
def test_options_answers_allow_as_header_and_json(client, path):
    response = client.options(path)
    assert response.status_code == 200 and response.content_type == "application/json"
    assert response.json == {"allow": sorted(ALLOWED)}
    assert response.headers["Allow"] == ", ".join(sorted(ALLOWED))


@pytest.mark.parametrize("path", [path for path in PATHS if path != "/docs"])
def test_head_is_get_without_a_body(client, path):
    response = client.head(path)
    assert response.status_code == 200 and response.content_type == "application/json"
    assert response.data == b"" and int(response.headers["Content-Length"]) > 0


def test_head_on_random_burns_a_number_like_get(client):
    assert client.head("/v3/random").status_code == 200
    assert client.get("/v3/stats").json["types"]["int"]["issued"] == 1


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "POST", "DELETE"])
@pytest.mark.parametrize(
    "path",
    ["/v6/random", "/v1/random/", "/v1/random%00", "/%ff", "/v1/%C3%A9", "/static/../wsgi.py",
     "/static/%2e%2e/wsgi.py", "/static/docs/nope.js", "/v1/random;type=float", "//v1/random"],
)  # fmt: skip
def test_unknown_paths_get_json_404(client, path, method):
    response = client.open(path, method=method)
    if path.startswith("/static/") and method not in ("GET", "HEAD"):
        # The route /static/<filename> exists whatever the file: OPTIONS describes it, others are 405.
        assert response.status_code == (200 if method == "OPTIONS" else 405)
        assert response.content_type == "application/json"
        return
    assert response.status_code == 404 and response.content_type == "application/json"
    if method != "HEAD":
        assert response.json["code"] == "not_found"


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("foo=bar", 200),  # unknown parameters are ignored
        ("%ff=%ff&%00=1", 200),
        ("&&&=&", 200),
        ("type=FLOAT&x=" + "y" * 3000, 200),
        ("type=%ff", 422),
        ("type=%00", 422),
        ("type=fl%00oat", 422),
        ("type=%C3%A9", 422),
        ("type=float%20", 422),
        ("type", 422),  # present but empty
        ("type=int&type=int", 422),  # at most once, even when equal
        ("count=%ff", 422),
        ("count=1%00", 422),
        ("count=%D9%A1", 422),  # ARABIC-INDIC DIGIT ONE: a digit, but not ASCII
        ("count=%C2%B2", 422),  # SUPERSCRIPT TWO
        ("count=-1", 422),
        ("count=1e2", 422),
        ("count=" + "9" * 5000, 422),
        ("count=1&count=1", 422),
        ("count=0001", 200),
    ],
)
@pytest.mark.parametrize("stage", ["v2", "v3", "v4", "v5"])
def test_junk_query_on_validating_stages(client, stage, query, status):
    response = client.get(f"/{stage}/random?{query}")
    assert response.status_code == status, response.json
    assert response.content_type == "application/json"
    assert ("error" in response.json) == (status != 200)


@pytest.mark.parametrize(
    ("query", "kind"),
    [("type=%ff", int), ("type=%00", int), ("type=FlOaT", float), ("type=float&type=int", float),
     ("type=int&type=float", int), ("count=5&junk=%C3%A9", int), ("type=" + "x" * 3000, int)],
)  # fmt: skip
def test_v1_reads_type_leniently_and_never_answers_422(client, query, kind):
    response = client.get(f"/v1/random?{query}")
    assert response.status_code == 200
    assert set(response.json) == {"number"} and isinstance(response.json["number"], kind)


def raw_request(port: int, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Sends `head` as is (no client-side escaping) and reads the whole answer: status, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    header_block, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = header_block.decode("latin1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


# (request line or head, expected status, expected `code`); what gunicorn refuses never reaches the app.
WIRE_CASES = [
    (b"GET /v2/random?x=" + b"a" * 4000 + b" HTTP/1.1", 200, None),  # just under 4094: the app answers
    (b"GET /" + b"a" * 4000 + b" HTTP/1.1", 404, "not_found"),
    (b"GET /v2/random?x=" + b"a" * 5000 + b" HTTP/1.1", 414, "uri_too_long"),  # gunicorn's limit
    (b"GET /v2/random?type=\xff HTTP/1.1", 400, "bad_request"),  # raw, not percent-encoded
    (b"GET /v1/\xc3\xa9 HTTP/1.1", 400, "bad_request"),
    (b"GET /v2/random?type=\x00 HTTP/1.1", 400, "bad_request"),
    (b"GET /v2/random?type=a b HTTP/1.1", 400, "bad_request"),
    (b"GET v2/random HTTP/1.1", 400, "bad_request"),
    (b"GET /healthz HTTP/1.1\r\nX-Junk: " + b"j" * 9000, 431, "request_header_fields_too_large"),
    # gunicorn's limits are per header field (8190 bytes) and 100 fields.
    (
        b"GET /healthz HTTP/1.1" + b"".join(b"\r\nX-%d: 1" % i for i in range(101)),
        431,
        "request_header_fields_too_large",
    ),
    (b"GET /healthz HTTP/1.1" + b"".join(b"\r\nX-%d: 1" % i for i in range(90)), 200, None),
    (b"GET /v2/random?type=%ff&count=%00 HTTP/1.1", 422, "invalid_parameter"),
    (b"GET /v3/random?type=%C3%A9 HTTP/1.1", 422, "invalid_parameter"),
    (b"GET /v5/random?count=2&count=2 HTTP/1.1", 422, "invalid_parameter"),
    (b"BREW /v3/random HTTP/1.1", 405, "method_not_allowed"),
    (b"DELETE /v5/random HTTP/1.1", 405, "method_not_allowed"),
    (b"OPTIONS /v3/random HTTP/1.1", 200, None),
    (b"POST /openapi.json HTTP/1.1\r\nContent-Length: 0", 405, "method_not_allowed"),
]


def test_the_wire_gets_json_for_every_hostile_request(make_server):
    """Through real gunicorn: its own refusals (414, 431, 400) are JSON too (see gunicorn.conf.py)."""
    server = make_server(workers=1, threads=2)
    for head, status, code in WIRE_CASES:
        answered, headers, body = raw_request(server.port, head)
        label = head[:60]
        assert answered == status, (label, body[:300])
        assert headers["content-type"] == "application/json", (label, headers)
        assert headers["cache-control"] == "no-store", label
        document = json.loads(body)
        assert document.get("code") == code, (label, document)
        assert ("error" in document) == (code is not None), label
    answered, headers, body = raw_request(server.port, b"HEAD /v2/random HTTP/1.1")
    assert answered == 200 and headers["content-type"] == "application/json" and body == b""
    assert server.get("/healthz")[:2] == (200, {"status": "ok"}), "the server stopped serving"
    assert "Traceback" not in server.log()
