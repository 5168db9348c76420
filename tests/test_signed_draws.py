"""Signed draws over real gunicorn: serials without gaps across every worker (and across two hosts on one
PostgreSQL), each result fetched again byte for byte, checked by the real `flask verify` against the server's key
set, a tampered one refused with the reason, and a rotated key's results still valid."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.postgres import start_pair
from tests.support import REPO, get, put_json

FLASK = str(Path(sys.executable).with_name("flask"))


def raw_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


def flask_cli(instance: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {"UNIQUERAND_INSTANCE_PATH": str(instance), "PATH": str(Path(sys.executable).parent)}
    return subprocess.run(
        [FLASK, "--app", "wsgi", *args], cwd=REPO, env=env, input=stdin, capture_output=True, timeout=60
    )


def signed(port: int, name: str, count: int = 5, headers: dict[str, str] | None = None) -> bytes:
    status, body, _ = raw_get(port, f"/v5/spaces/{name}/random?count={count}&signed=true", headers)
    assert status == 200, body
    return body


def test_serials_have_no_gap_across_workers_and_each_draw_is_kept_byte_for_byte(make_server):
    server = make_server(workers=3, env={"UNIQUERAND_V5_BLOCK_SIZE": "9"})
    assert put_json(server.port, "/v5/spaces/raffle", {"type": "int", "min": 1, "max": 3000})[0] == 201
    with ThreadPoolExecutor(12) as pool:
        bodies = list(pool.map(lambda _: signed(server.port, "raffle"), range(60)))
    results = [json.loads(body) for body in bodies]
    assert sorted(r["serial"] for r in results) == list(range(1, 61))
    numbers = [n for r in results for n in r["numbers"]]
    assert len(numbers) == len(set(numbers)) == 300
    first = results[0]
    assert (first["space"], first["type"], first["min"], first["max"]) == ("raffle", "int", 1, 3000)
    for body, result in zip(bodies, results, strict=True):
        status, again, headers = raw_get(server.port, f"/v5/spaces/raffle/draws/{result['serial']}")
        assert (status, again) == (200, body) and headers["content-type"] == "application/json"
    for missing in ("/v5/spaces/raffle/draws/61", "/v5/spaces/raffle/draws/0", f"/v5/spaces/raffle/draws/{10**30}"):
        status, body, _ = get(server.port, missing)
        assert (status, body["code"]) == (404, "draw_not_found"), missing
    assert get(server.port, "/v5/spaces/nope/draws/1")[1]["code"] == "space_not_found"


def test_draws_of_two_spaces_in_one_group_each_count_their_own_serials(make_server):
    # One worker, twelve at once: each group of the writer holds draws of both spaces.
    server = make_server(workers=1)
    for name in ("red", "blue"):
        assert put_json(server.port, f"/v5/spaces/{name}", {"type": "int", "min": 1, "max": 2000})[0] == 201
    with ThreadPoolExecutor(12) as pool:
        results = [json.loads(b) for b in pool.map(lambda name: signed(server.port, name), ["red", "blue"] * 24)]
    for name in ("red", "blue"):
        assert sorted(r["serial"] for r in results if r["space"] == name) == list(range(1, 25))


def test_flask_verify_accepts_a_result_and_says_what_failed_in_a_tampered_one(make_server, instance_path, tmp_path):
    server = make_server(workers=2)
    put_json(server.port, "/v5/spaces/odds", {"type": "float", "min": 0, "max": 1, "decimals": 3})
    body = signed(server.port, "odds", count=3)
    result = json.loads(body)
    assert result["type"] == "float" and all(0 <= n < 1 for n in result["numbers"])
    url = f"http://127.0.0.1:{server.port}"
    saved = tmp_path / "result.json"
    saved.write_bytes(body)
    ok = flask_cli(instance_path, "verify", str(saved), "--keys", url)
    assert ok.returncode == 0 and b"valid: draw 1 of space 'odds', 3 numbers" in ok.stdout, ok
    keys = tmp_path / "keys.json"
    keys.write_bytes(raw_get(server.port, "/v5/signing-keys")[1])
    tampered = {
        "a number": {**result, "numbers": [0.5, *result["numbers"][1:]]},
        "the serial": {**result, "serial": 2},
        "the space": {**result, "space": "evens"},
    }
    for what, changed in tampered.items():
        refused = flask_cli(instance_path, "verify", "-", "--keys", str(keys), stdin=json.dumps(changed).encode())
        assert refused.returncode == 1 and b"invalid: the signature does not match" in refused.stderr, (what, refused)
    other_key = {**result, "key_id": "A" * 43}
    refused = flask_cli(instance_path, "verify", "-", "--keys", url, stdin=json.dumps(other_key).encode())
    assert refused.returncode == 1 and b"is not in the key set" in refused.stderr, refused
    unsigned = {k: v for k, v in result.items() if k != "signature"}
    refused = flask_cli(instance_path, "verify", "-", "--keys", url, stdin=json.dumps(unsigned).encode())
    assert refused.returncode == 1 and b"lacks signature" in refused.stderr, refused


def test_a_rotated_key_keeps_its_results_valid(make_server, instance_path, tmp_path):
    server = make_server(workers=2)
    put_json(server.port, "/v5/spaces/rotating", {"type": "int", "min": 0, "max": 999})
    before = json.loads(signed(server.port, "rotating"))
    assert (instance_path / "v5" / "signing-key.json").stat().st_mode & 0o777 == 0o600
    rotated = flask_cli(instance_path, "signing-key", "rotate")
    assert rotated.returncode == 0 and before["key_id"].encode() in rotated.stdout, rotated
    # Fresh connections reach both workers: each reads the new file.
    after = [json.loads(signed(server.port, "rotating")) for _ in range(6)]
    assert {r["key_id"] for r in after} == {after[0]["key_id"]} != {before["key_id"]}
    key_set = json.loads(raw_get(server.port, "/v5/signing-keys")[1])
    assert [key["kid"] for key in key_set["keys"]] == [after[0]["key_id"], before["key_id"]]
    assert all(key["kty"] == "OKP" and key["crv"] == "Ed25519" and "d" not in key for key in key_set["keys"])
    for result in (before, after[-1]):
        saved = tmp_path / f"{result['serial']}.json"
        saved.write_text(json.dumps(result))
        assert (
            flask_cli(instance_path, "verify", str(saved), "--keys", f"http://127.0.0.1:{server.port}").returncode == 0
        )
    assert "signing-key.json" not in server.log() and json.dumps(key_set).find('"d"') == -1


def test_a_signed_retry_with_its_key_replays_without_a_new_serial(make_server):
    server = make_server(workers=2)
    put_json(server.port, "/v5/spaces/once", {"type": "int", "min": 0, "max": 99})
    first = signed(server.port, "once", headers={"Idempotency-Key": "draw-2026-12"})
    for _ in range(4):
        assert signed(server.port, "once", headers={"Idempotency-Key": "draw-2026-12"}) == first
    assert json.loads(signed(server.port, "once"))["serial"] == 2


def test_what_cannot_be_signed_is_refused_before_anything_is_issued(make_server):
    server = make_server(workers=1)
    put_json(server.port, "/v5/spaces/wide", {"type": "int", "min": 0, "max": 2**60})
    status, body, _ = get(server.port, "/v5/spaces/wide/random?signed=true")
    assert (status, body["code"], body["parameter"]) == (422, "invalid_parameter", "signed")
    assert get(server.port, "/v5/spaces/wide")[1]["issued"] == 0
    put_json(server.port, "/v5/spaces/small", {"type": "int", "min": 0, "max": 9})
    for query in ("signed=yes", "signed=true&signed=true", "signed=TRUE"):
        status, body, _ = get(server.port, f"/v5/spaces/small/random?{query}")
        assert (status, body["parameter"]) == (422, "signed"), query
    assert get(server.port, "/v5/spaces/small/random?signed=false")[0] == 200


def test_two_hosts_count_one_space_s_serials_and_list_both_keys(servers, tmp_path, database_url):
    a, b = start_pair(servers, tmp_path, database_url, {"V5_BLOCK_SIZE": 9})
    put_json(a.port, "/v5/spaces/shared", {"type": "int", "min": 1, "max": 5000})
    with ThreadPoolExecutor(12) as pool:
        bodies = list(pool.map(lambda port: signed(port, "shared"), [a.port, b.port] * 20))
    results = [json.loads(body) for body in bodies]
    assert sorted(r["serial"] for r in results) == list(range(1, 41))
    for body, result in zip(bodies, results, strict=True):
        assert raw_get(b.port, f"/v5/spaces/shared/draws/{result['serial']}")[1] == body
    # B was given no copy of A's signing key: it made its own, and both hosts' key sets list both.
    kids = {r["key_id"] for r in results}
    assert len(kids) == 2
    for server in (a, b):
        assert {key["kid"] for key in json.loads(raw_get(server.port, "/v5/signing-keys")[1])["keys"]} == kids


def test_with_tokens_a_draw_is_fetched_with_the_space_s_scope_and_the_key_set_is_open(make_server, instance_path):
    from uniquerand.tokens import TokenFile

    tokens = TokenFile(instance_path / "tokens")
    admin, raffle, other = (
        tokens.create(n, s) for n, s in (("a", ["spaces:admin"]), ("r", ["draw:raffle"]), ("o", ["draw:other"]))
    )
    server = make_server({"UNIQUERAND_TOKENS_FILE": "tokens"}, workers=1)
    assert (
        put_json(
            server.port,
            "/v5/spaces/raffle",
            {"type": "int", "min": 1, "max": 99},
            headers={"Authorization": f"Bearer {admin}"},
        )[0]
        == 201
    )
    body = signed(server.port, "raffle", headers={"Authorization": f"Bearer {raffle}"})
    assert raw_get(server.port, "/v5/spaces/raffle/draws/1", {"Authorization": f"Bearer {raffle}"})[1] == body
    status, refused, _ = raw_get(server.port, "/v5/spaces/raffle/draws/1", {"Authorization": f"Bearer {other}"})
    assert status == 403 and b'"needed_scopes":["draw:raffle"]' in refused
    assert raw_get(server.port, "/v5/spaces/raffle/draws/1")[0] == 401
    status, keys, _ = raw_get(server.port, "/v5/signing-keys")
    assert status == 200 and json.loads(body)["key_id"] in keys.decode()


def test_the_docs_ten_line_check_verifies_a_real_result(make_server, tmp_path):
    """docs/verifiable-draws.md's plain-Python check, run as written, on a result from a real server."""
    text = (REPO / "docs" / "verifiable-draws.md").read_text()
    snippet = text.split("<!-- verify-snippet -->\n```python\n", 1)[1].split("```", 1)[0]
    assert len([line for line in snippet.splitlines() if line.strip()]) <= 10
    (tmp_path / "check.py").write_text(snippet)
    server = make_server(workers=1)
    put_json(server.port, "/v5/spaces/public", {"type": "int", "min": 1, "max": 500})
    (tmp_path / "draw.json").write_bytes(signed(server.port, "public", count=2))
    url = f"http://127.0.0.1:{server.port}"
    checked = subprocess.run(
        [sys.executable, "check.py", "draw.json", url], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0 and checked.stdout.startswith("valid: draw 1 of public"), checked
    tampered = json.loads((tmp_path / "draw.json").read_text()) | {"serial": 7}
    (tmp_path / "draw.json").write_text(json.dumps(tampered))
    checked = subprocess.run(
        [sys.executable, "check.py", "draw.json", url], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode != 0 and "InvalidSignature" in checked.stderr


def test_reading_the_key_set_makes_no_key_and_an_unreadable_input_checks_nothing(make_server, instance_path, tmp_path):
    server = make_server(workers=1)
    status, body, _ = raw_get(server.port, "/v5/signing-keys")
    assert (status, json.loads(body)) == (200, {"keys": []})
    assert not (instance_path / "v5" / "signing-key.json").exists()
    (tmp_path / "keys.json").write_text("not json")
    checked = flask_cli(instance_path, "verify", "-", "--keys", str(tmp_path / "keys.json"), stdin=b"{}")
    assert checked.returncode == 2 and b"cannot be read" in checked.stderr, checked
    checked = flask_cli(instance_path, "verify", "-", "--keys", str(tmp_path / "keys.json"), stdin=b"[")
    assert checked.returncode == 2 and b"not JSON" in checked.stderr, checked
