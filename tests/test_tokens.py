"""Access tokens: the tokens file (hashes only, atomic changes, re-read on change, fail closed), the bearer check
of every protected path against every bad credential (401 JSON, nothing burned, no store touched), the open
paths, metrics and logs naming the client, `flask tokens`, and a real gunicorn picking up changes unrestarted."""

from __future__ import annotations

import http.client
import json
import logging
import multiprocessing
import os
import re
import runpy
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import REPO, STAGE_NAMES, finish_process
from tests.test_hostile_input import raw_request
from uniquerand import tokens as tokens_module
from uniquerand.config import ConfigError
from uniquerand.logs import LogfmtFormatter
from uniquerand.tokens import TokenFile, TokenFileError, TokenNameError, digest_of, parse_entries

PROTECTED = [f"/{stage}/{end}" for stage in STAGE_NAMES for end in ("random", "stats")]
OPEN = ["/", "/healthz", "/readyz", "/docs", "/openapi.json", "/metrics"]
TOKEN_SHAPE = re.compile(r"urt_[A-Za-z0-9_-]{43}")
CHALLENGE = 'Bearer realm="uniquerand"'
INVALID = 'Bearer realm="uniquerand", error="invalid_token"'


def one_byte_changed(token: str) -> str:
    """The token with its middle character replaced: the same length, the same alphabet."""
    middle = len(token) // 2
    return token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]


@pytest.fixture
def token_file(instance_path) -> TokenFile:
    return TokenFile(instance_path / "tokens")


@pytest.fixture
def secured(make_app, filled_shards, token_file):
    """An app with TOKENS_FILE set, /v4's shards filled, and a token for the client `ci` (its revoked
    predecessor `gone`'s token too)."""
    filled_shards(size=50)
    gone = token_file.create("gone")
    token_file.revoke("gone")
    token = token_file.create("ci")
    app = make_app(TOKENS_FILE="tokens")
    return app, token, gone


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def every_stats(client, token: str) -> dict:
    answers = {stage: client.get(f"/{stage}/stats", headers=bearer(token)) for stage in STAGE_NAMES}
    assert all(response.status_code == 200 for response in answers.values())
    return {stage: response.json for stage, response in answers.items()}


def assert_401(response, challenge: str) -> None:
    assert response.status_code == 401
    assert response.content_type == "application/json"
    assert response.json["code"] == "unauthorized" and response.json["error"]
    assert set(response.json) == {"error", "code"}
    assert response.headers["WWW-Authenticate"] == challenge
    assert response.headers["Cache-Control"] == "no-store"


# The tokens file


def test_create_stores_only_a_hash_in_a_private_file(token_file):
    token = token_file.create("ci")
    assert TOKEN_SHAPE.fullmatch(token)
    text = token_file.path.read_text()
    assert token not in text
    [line] = [line for line in text.splitlines() if not line.startswith("#")]
    name, digest, created = line.split("\t")
    assert (name, digest) == ("ci", digest_of(token).hex())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created)
    assert stat.S_IMODE(token_file.path.stat().st_mode) == 0o600
    assert token_file.verify(token) == "ci"


def test_verify_refuses_a_wrong_token_and_a_one_byte_change(token_file):
    token = token_file.create("ci")
    token_file.create("other")
    assert token_file.verify(one_byte_changed(token)) is None
    assert token_file.verify(tokens_module.new_token()) is None
    assert token_file.verify("") is None


@pytest.mark.parametrize("which", [0, 9, None])
def test_every_stored_hash_is_compared_in_constant_time(token_file, monkeypatch, which):
    """Which entry matches, or whether any does, does not change the work done: every stored hash is compared,
    each with hmac.compare_digest."""
    issued = [token_file.create(f"client-{number}") for number in range(10)]
    compared: list[bytes] = []
    real = tokens_module.hmac.compare_digest

    def counting(stored, presented):
        compared.append(stored)
        return real(stored, presented)

    monkeypatch.setattr(tokens_module.hmac, "compare_digest", counting)
    presented = issued[which] if which is not None else tokens_module.new_token()
    assert token_file.verify(presented) == (f"client-{which}" if which is not None else None)
    assert compared == [entry.digest for entry in token_file.entries()]


def test_revoke_rewrites_the_file_whole_and_keeps_the_rest(token_file):
    first, second = token_file.create("first"), token_file.create("second")
    token_file.path.chmod(0o640)
    with token_file.path.open("a") as file:
        file.write("# a comment an operator wrote\n")
    inode = token_file.path.stat().st_ino
    token_file.revoke("first")
    assert token_file.path.stat().st_ino != inode, "a new file renamed over the old one"
    assert stat.S_IMODE(token_file.path.stat().st_mode) == 0o640
    assert "# a comment an operator wrote" in token_file.path.read_text()
    assert (token_file.verify(first), token_file.verify(second)) == (None, "second")
    assert [entry.name for entry in token_file.entries()] == ["second"]
    assert not [path for path in token_file.path.parent.iterdir() if path.suffix == ".tmp"]


@pytest.mark.parametrize("name", ["", "a b", "a\tb", "é", "x" * 65, "#", "a/b", "a=b"])
def test_names_outside_the_alphabet_are_refused(token_file, name):
    with pytest.raises(TokenNameError):
        token_file.create(name)
    with pytest.raises(TokenNameError):
        token_file.revoke(name)
    assert not token_file.path.exists()


def test_duplicate_and_unknown_names_are_refused(token_file):
    token_file.create("ci")
    with pytest.raises(TokenNameError, match="exists"):
        token_file.create("ci")
    with pytest.raises(TokenNameError, match="no token"):
        token_file.revoke("nobody")
    assert [entry.name for entry in token_file.entries()] == ["ci"]


BROKEN_FILES = {
    "bad line": "ci\tnot-a-hash\n",
    "too many fields": f"ci\t{'a' * 64}\t2026-01-01T00:00:00Z\tdraw:*\textra\n",
    "not a scope": f"ci\t{'a' * 64}\t2026-01-01T00:00:00Z\tdraw:*,delete:everything\n",
    "scopes before created": f"ci\t{'a' * 64}\tdraw:*\t2026-01-01T00:00:00Z\n",
    "bad created": f"ci\t{'a' * 64}\tyesterday\n",
    "repeated name": f"ci\t{'a' * 64}\nci\t{'b' * 64}\n",
    "repeated hash": f"ci\t{'a' * 64}\ncd\t{'a' * 64}\n",
    "not UTF-8": b"ci\t\xff\n",
}


@pytest.mark.parametrize("content", BROKEN_FILES.values(), ids=BROKEN_FILES.keys())
def test_a_malformed_file_fails_closed_and_is_never_written_over(token_file, content):
    token_file.path.parent.mkdir(parents=True)
    if isinstance(content, str):
        content = content.encode()
    token_file.path.write_bytes(content)
    with pytest.raises(TokenFileError):
        token_file.verify("urt_anything")
    with pytest.raises(TokenFileError):
        token_file.create("new")
    with pytest.raises(TokenFileError):
        token_file.revoke("ci")
    assert token_file.path.read_bytes() == content


def test_a_missing_world_writable_or_special_file_fails_closed(token_file):
    with pytest.raises(TokenFileError, match="cannot be read"):
        token_file.entries()
    token = token_file.create("ci")
    token_file.path.chmod(0o666)
    with pytest.raises(TokenFileError, match="writable by every user"):
        token_file.verify(token)
    token_file.create("other")  # a command's rewrite drops the others' write permission
    assert stat.S_IMODE(token_file.path.stat().st_mode) == 0o664
    assert token_file.verify(token) == "ci"
    token_file.path.unlink()
    os.mkfifo(token_file.path)
    with pytest.raises(TokenFileError, match="not a regular file"):
        token_file.verify(token)


def test_blank_lines_comments_and_two_field_lines_are_read(token_file):
    token = tokens_module.new_token()
    token_file.path.parent.mkdir(parents=True)
    token_file.path.write_text(f"\n# hand-written\n  \nci  {digest_of(token).hex().upper()}\n")
    token_file.path.chmod(0o600)
    assert token_file.verify(token) == "ci"
    assert parse_entries(token_file.path.read_text())[0].created == ""


def test_the_file_is_read_again_only_when_it_changed(token_file, monkeypatch):
    """A server's view (one TokenFile) and an operator's commands (another): every change is seen at the next
    check; an unchanged file, once old enough to trust its mtime, is not read again, and is parsed once."""
    server = TokenFile(token_file.path)
    token = token_file.create("ci")
    reads, parses = [], []
    read, parse = TokenFile._read, tokens_module.parse_entries
    monkeypatch.setattr(TokenFile, "_read", lambda self, previous: reads.append(1) or read(self, previous))
    monkeypatch.setattr(tokens_module, "parse_entries", lambda text: parses.append(1) or parse(text))
    assert server.verify(token) == "ci"
    # Just written: its mtime may not change with the next write (a coarse clock), so it is read every time.
    assert server.verify(token) == "ci" and server.verify(token) == "ci"
    assert (len(reads), len(parses)) == (3, 1)
    old = time.time_ns() - 10 * tokens_module.RACY_NS
    os.utime(token_file.path, ns=(old, old))
    for _ in range(5):
        assert server.verify(token) == "ci"
    assert (len(reads), len(parses)) == (4, 1), "an old, unchanged file is read once more, and not parsed"
    other = token_file.create("other")
    assert server.verify(other) == "other"
    token_file.revoke("ci")
    assert server.verify(token) is None


def create_tokens(path: str, prefix: str, count: int) -> None:
    for number in range(count):
        TokenFile(Path(path)).create(f"{prefix}-{number}")


def test_concurrent_commands_lose_no_token(token_file):
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=create_tokens, args=(str(token_file.path), f"p{index}", 5)) for index in range(4)
    ]
    for process in processes:
        process.start()
    for process in processes:
        finish_process(process)
        assert process.exitcode == 0
    names = {entry.name for entry in token_file.entries()}
    assert names == {f"p{index}-{number}" for index in range(4) for number in range(5)}


# Settings


def test_tokens_file_is_relative_to_the_instance_folder(make_app, instance_path, tmp_path):
    assert make_app(TOKENS_FILE="tokens").config["TOKENS_FILE"] == str(instance_path.resolve() / "tokens")
    assert make_app(TOKENS_FILE=str(tmp_path / "t")).config["TOKENS_FILE"] == str(tmp_path / "t")
    assert make_app().config["TOKENS_FILE"] == ""


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("1", True), ("off", False), (False, False)])
def test_metrics_require_token_is_a_boolean(make_app, value, expected):
    assert make_app(TOKENS_FILE="tokens", METRICS_REQUIRE_TOKEN=value).config["METRICS_REQUIRE_TOKEN"] is expected


def test_metrics_require_token_needs_a_tokens_file(make_app, monkeypatch):
    with pytest.raises(ConfigError, match="METRICS_REQUIRE_TOKEN needs TOKENS_FILE"):
        make_app(METRICS_REQUIRE_TOKEN=True)
    monkeypatch.setenv("UNIQUERAND_METRICS_REQUIRE_TOKEN", "maybe")
    with pytest.raises(ConfigError, match="METRICS_REQUIRE_TOKEN must be true or false"):
        make_app(TOKENS_FILE="tokens")


# Without tokens: as before


def test_by_default_the_server_listens_on_loopback_only():
    # The first point: with nothing configured, no token is needed, so nothing beyond this host may ask.
    assert runpy.run_path(str(REPO / "gunicorn.conf.py"))["bind"] == "127.0.0.1:8000"


def test_without_a_tokens_file_nothing_is_checked(app, filled_shards):
    filled_shards(size=50)
    assert not set(app.before_request_funcs) & set(STAGE_NAMES), "no check runs on the stage paths"
    client = app.test_client()
    for path in PROTECTED:
        assert client.get(path, headers={"Authorization": "Bearer junk"}).status_code == 200, path
    document = client.get("/openapi.json").json
    assert "securitySchemes" not in document["components"]
    assert not [op for item in document["paths"].values() for op in item.values() if "security" in op]


# The bearer check over HTTP

BAD_CREDENTIALS = {
    "no header": (lambda token, gone: [], CHALLENGE),
    "wrong token": (lambda token, gone: [f"Bearer {tokens_module.new_token()}"], INVALID),
    "revoked token": (lambda token, gone: [f"Bearer {gone}"], INVALID),
    "one byte changed": (lambda token, gone: [f"Bearer {one_byte_changed(token)}"], INVALID),
    "Bearer alone": (lambda token, gone: ["Bearer"], CHALLENGE),
    "Bearer and a space": (lambda token, gone: ["Bearer "], CHALLENGE),
    "empty header": (lambda token, gone: [""], CHALLENGE),
    "token without scheme": (lambda token, gone: [token], CHALLENGE),
    "Basic scheme": (lambda token, gone: [f"Basic {token}"], CHALLENGE),
    "tab instead of space": (lambda token, gone: [f"Bearer\t{token}"], CHALLENGE),
    "two headers": (lambda token, gone: [f"Bearer {token}", f"Bearer {token}"], INVALID),
    "two tokens in one": (lambda token, gone: [f"Bearer {token}, Bearer {token}"], INVALID),
    "token then junk": (lambda token, gone: [f"Bearer {token} x"], INVALID),
    "token and padding": (lambda token, gone: [f"Bearer {token}="], INVALID),
    "non-ASCII in token": (lambda token, gone: [f"Bearer {token[:-1]}é"], INVALID),
    "NUL in token": (lambda token, gone: [f"Bearer {token}\x00"], INVALID),
    "prefix of token": (lambda token, gone: [f"Bearer {token[:-1]}"], INVALID),
    "token twice as long": (lambda token, gone: [f"Bearer {token}{token}"], INVALID),
    "over-long": (lambda token, gone: ["Bearer " + "a" * 4000], INVALID),
    "hash instead of token": (lambda token, gone: [f"Bearer {digest_of(token).hex()}"], INVALID),
}


@pytest.mark.parametrize("case", BAD_CREDENTIALS.values(), ids=BAD_CREDENTIALS.keys())
def test_bad_credentials_get_401_json_burn_nothing_and_touch_no_store(secured, monkeypatch, case):
    """On every protected path, GET and HEAD (which burns a number when allowed)."""
    app, token, gone = secured
    build, challenge = case
    client = app.test_client()
    before = every_stats(client, token)
    touched = []
    for stage in app.extensions["uniquerand"]["stages"]:
        for method in ("issue", "stats"):
            monkeypatch.setattr(
                stage.store, method, lambda *args, _name=f"{stage.name}.{method}": touched.append(_name)
            )
    headers = [("Authorization", value) for value in build(token, gone)]
    for path in PROTECTED:
        assert_401(client.get(path, headers=headers), challenge)
        head = client.head(path, headers=headers)
        assert head.status_code == 401 and head.headers["WWW-Authenticate"] == challenge and head.data == b""
    assert touched == []
    monkeypatch.undo()
    assert every_stats(client, token) == before


def test_the_right_token_works_on_every_protected_path(secured):
    app, token, _ = secured
    client = app.test_client()
    for path in PROTECTED:
        for header in (f"Bearer {token}", f"bearer {token}", f"BEARER   {token}"):
            response = client.get(path, headers={"Authorization": header})
            assert response.status_code == 200, (path, response.json)
            assert "WWW-Authenticate" not in response.headers
    assert every_stats(client, token)["v3"]["types"]["int"]["issued"] == 3


@pytest.mark.parametrize("path", OPEN)
def test_open_paths_need_no_token(secured, path):
    client = secured[0].test_client()
    with client.get(path) as response:
        assert response.status_code == 200, path


@pytest.mark.parametrize("path", PROTECTED)
def test_options_describes_a_protected_path_without_a_token(secured, path):
    response = secured[0].test_client().options(path)
    assert response.status_code == 200 and response.json == {"allow": ["GET", "HEAD", "OPTIONS"]}


def test_metrics_can_require_a_token(make_app, token_file):
    token = token_file.create("prometheus")
    client = make_app(TOKENS_FILE="tokens", METRICS_REQUIRE_TOKEN="true").test_client()
    assert_401(client.get("/metrics"), CHALLENGE)
    assert_401(client.get("/metrics", headers=bearer(one_byte_changed(token))), INVALID)
    response = client.get("/metrics", headers=bearer(token))
    assert response.status_code == 200 and response.mimetype == "text/plain"
    for path in ("/", "/healthz", "/readyz", "/docs", "/openapi.json"):
        with client.get(path) as response:
            assert response.status_code == 200, path


@pytest.mark.parametrize("breakage", ["missing", "malformed", "world-writable"])
def test_a_broken_tokens_file_fails_closed_with_503(secured, token_file, breakage, caplog):
    app, token, _ = secured
    client = app.test_client()
    before = every_stats(client, token)
    if breakage == "missing":
        token_file.path.unlink()
    elif breakage == "malformed":
        token_file.path.write_text(token_file.path.read_text() + "junk\n")
    else:
        token_file.path.chmod(0o646)
    for path in PROTECTED:
        response = client.get(path, headers=bearer(token))
        assert response.status_code == 503, path
        assert response.content_type == "application/json" and response.headers["Retry-After"] == "1"
        assert response.json == {"code": "tokens_unavailable", "error": response.json["error"]}
        assert str(token_file.path) not in response.json["error"], "the path is for the log, not the client"
    ready = client.get("/readyz")
    assert ready.status_code == 503 and set(ready.json["stages"]) == set(STAGE_NAMES)
    assert client.get("/healthz").status_code == 200
    token_file.path.unlink(missing_ok=True)
    token = token_file.create("ci")
    assert every_stats(client, token) == before, "nothing was served while the file was broken"


@pytest.fixture
def records():
    captured: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = captured.append
    logger = logging.getLogger("uniquerand")
    logger.addHandler(handler)
    yield captured
    logger.removeHandler(handler)


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_and_logs_name_the_client_never_the_token(make_app, token_file, records):
    token = token_file.create("ci")
    client = make_app(TOKENS_FILE="tokens", INT_MIN=1, INT_MAX=2).test_client()
    assert client.get("/v3/random?count=2", headers=bearer(token)).status_code == 200
    assert client.get("/v3/random", headers=bearer(token)).status_code == 503  # exhausted: a store_error
    assert client.get("/v3/random", headers=bearer(one_byte_changed(token))).status_code == 401
    assert client.get("/v3/random").status_code == 401
    text = client.get("/metrics").text
    values = metric_samples(text)
    labels = (("client", "ci"), ("stage", "v3"), ("type", "int"))
    assert values[("uniquerand_numbers_issued_total", labels)] == 2
    refused = (("client", ""), ("outcome", "unauthorized"), ("stage", "v3"), ("type", "none"))
    assert values[("uniquerand_requests_total", refused)] == 2
    [store_error] = [record for record in records if getattr(record, "event", "") == "store_error"]
    assert store_error.fields["client"] == "ci"
    refusals = [record.fields for record in records if getattr(record, "event", "") == "access_refused"]
    assert [fields["reason"] for fields in refusals] == ["unknown", "missing"]
    lines = "\n".join(LogfmtFormatter().format(record) for record in records)
    for secret in (token, one_byte_changed(token), token[len("urt_") :], digest_of(token).hex()):
        assert secret not in lines and secret not in text


# flask tokens


@pytest.fixture
def tokens_runner(make_app):
    return make_app(TOKENS_FILE="tokens").test_cli_runner()


def test_cli_create_prints_the_token_once_on_stdout(tokens_runner, token_file):
    result = tokens_runner.invoke(args=["tokens", "create", "ci"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert TOKEN_SHAPE.fullmatch(token) and result.stdout == token + "\n"
    assert "will not be shown again" in result.stderr and token not in result.stderr
    assert token_file.verify(token) == "ci"
    listing = tokens_runner.invoke(args=["tokens", "list"])
    assert listing.exit_code == 0 and token not in listing.output
    assert re.fullmatch(r"ci\t\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\tdraw:\*\n", listing.stdout)


def test_cli_refuses_duplicates_unknown_and_invalid_names(tokens_runner, token_file):
    assert tokens_runner.invoke(args=["tokens", "create", "ci"]).exit_code == 0
    duplicate = tokens_runner.invoke(args=["tokens", "create", "ci"])
    assert duplicate.exit_code == 1 and "exists" in duplicate.output and not duplicate.stdout.strip()
    unknown = tokens_runner.invoke(args=["tokens", "revoke", "nobody"])
    assert unknown.exit_code == 1 and "no token is named 'nobody'" in unknown.output
    for command in ("create", "revoke"):
        invalid = tokens_runner.invoke(args=["tokens", command, "a b"])
        assert invalid.exit_code == 2 and "NAME" in invalid.output
    assert [entry.name for entry in token_file.entries()] == ["ci"]


def test_cli_revoke_and_list(tokens_runner, token_file):
    empty = tokens_runner.invoke(args=["tokens", "list"])
    assert empty.exit_code == 0 and empty.stdout == "" and "does not exist" in empty.stderr
    token = token_file.create("ci")
    token_file.create("other")
    result = tokens_runner.invoke(args=["tokens", "revoke", "ci"])
    assert result.exit_code == 0 and "Revoked" in result.output
    assert token_file.verify(token) is None
    assert tokens_runner.invoke(args=["tokens", "list"]).stdout.split("\t")[0] == "other"


def test_cli_without_a_tokens_file_setting_says_so(runner):
    for args in (["tokens", "create", "ci"], ["tokens", "list"], ["tokens", "revoke", "ci"]):
        result = runner.invoke(args=args)
        assert result.exit_code == 1 and "UNIQUERAND_TOKENS_FILE is not set" in result.output


def test_cli_on_a_malformed_file_changes_nothing(tokens_runner, token_file):
    token_file.create("ci")
    content = token_file.path.read_text() + "junk\n"
    token_file.path.write_text(content)
    for args in (["tokens", "create", "x"], ["tokens", "list"], ["tokens", "revoke", "ci"]):
        result = tokens_runner.invoke(args=args)
        assert result.exit_code == 1 and "line" in result.output, args
    assert token_file.path.read_text() == content


# A real server


def fetch(port: int, path: str, token: str | None = None) -> tuple[int, dict, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers=bearer(token) if token else {})
        response = connection.getresponse()
        headers = {key.lower(): value for key, value in response.getheaders()}
        return response.status, json.loads(response.read() or b"{}"), headers
    finally:
        connection.close()


def flask_tokens(instance_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "UNIQUERAND_INSTANCE_PATH": str(instance_path), "UNIQUERAND_TOKENS_FILE": "tokens"}
    command = [sys.executable, "-m", "flask", "tokens", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_a_running_server_picks_up_created_and_revoked_tokens_without_a_restart(make_server, instance_path):
    """Started before the file exists (fail closed: 503); `flask tokens create` -> 200 on every worker;
    `flask tokens revoke` -> 401 on every worker; the same master and workers throughout."""
    server = make_server({"UNIQUERAND_TOKENS_FILE": "tokens"}, workers=3, threads=2)
    processes = {server.process.pid, *server.worker_pids()}
    status, body, headers = fetch(server.port, "/v5/random", "urt_x")
    assert (status, body["code"], headers["retry-after"]) == (503, "tokens_unavailable", "1")

    created = flask_tokens(instance_path, "create", "ci")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    # Fresh connections: the requests spread over the workers, each with its own view of the file.
    answers = [fetch(server.port, "/v3/random", token) for _ in range(12)]
    assert [status for status, _, _ in answers] == [200] * 12
    assert fetch(server.port, "/v3/stats", token)[1]["types"]["int"]["issued"] == 12
    assert fetch(server.port, "/v5/random")[0] == 401

    revoked = flask_tokens(instance_path, "revoke", "ci")
    assert revoked.returncode == 0, revoked.stderr
    answers = [fetch(server.port, "/v3/random", token) for _ in range(12)]
    assert {(status, body["code"], headers["www-authenticate"]) for status, body, headers in answers} == {
        (401, "unauthorized", INVALID)
    }
    listed = flask_tokens(instance_path, "list")
    assert listed.returncode == 0 and listed.stdout == ""
    assert {server.process.pid, *server.worker_pids()} == processes, "no worker was restarted"
    assert token not in server.log()


# Through the wire: what gunicorn itself does with odd Authorization headers, before the app sees them.
WIRE_CASES = [
    (b"Authorization: Bearer {token}", 200),
    (b"authorization: bearer {token}", 200),
    (b"Authorization: Bearer {token}\r\nAuthorization: Bearer {token}", 401),
    (b"Authorization: Bearer {token}\r\nAuthorization: Bearer urt_other", 401),
    (b"Authorization: Bearer urt_other\r\nAuthorization: Bearer {token}", 401),
    (b"Authorization: Bearer\r\n {token}", 400),  # obsolete line folding: refused by gunicorn
    (b"Authorization: Bearer {token}\xc3\xa9", 401),
    (b"Authorization: Bearer \xff{token}", 401),
    (b"Authorization: Bearer {token}\x00", 400),
    (b"Authorization : Bearer {token}", 400),
    (b"Authorization: Bearer {token}\rX-Injected: 1", 400),  # a bare CR or LF inside a header: refused
    (b"Authorization: Bearer {token}\nX-Injected: 1", 400),
    (b"Authorization: Bearer {token}%0d%0aX-Injected: 1", 401),
    (b"Authorization:Bearer {token}", 200),  # no space after the colon: allowed by HTTP
    (b"Authorization: Bearer {token}   ", 200),  # trailing whitespace is not part of the value
]


def test_the_wire_never_lets_an_odd_header_through(make_server, instance_path, token_file):
    token = token_file.create("ci")
    server = make_server({"UNIQUERAND_TOKENS_FILE": "tokens"}, workers=1, threads=2)
    issued = 0
    for template, status in WIRE_CASES:
        head = b"GET /v3/random HTTP/1.1\r\n" + template.replace(b"{token}", token.encode())
        answered, headers, body = raw_request(server.port, head)
        label = template[:60]
        assert answered == status, (label, body[:300])
        assert headers["content-type"] == "application/json", label
        issued += status == 200
        if status == 401:
            assert json.loads(body)["code"] == "unauthorized", label
            assert headers["www-authenticate"].startswith(CHALLENGE), label
    assert fetch(server.port, "/v3/stats", token)[1]["types"]["int"]["issued"] == issued
    assert "Traceback" not in server.log()
