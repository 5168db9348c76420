"""Token scopes: `spaces:admin` creates named spaces, `draw:NAME` draws from one, `draw:*` from all and from every
stage; a token written before scopes existed keeps drawing everywhere and cannot create. A token without the
scope gets 403 `forbidden` as JSON, and the refused request changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support import get, put_json
from uniquerand.scopes import ScopeError
from uniquerand.tokens import TokenEntry, TokenFile, TokenFileError, digest_of, parse_entries

TICKETS = {"type": "int", "min": 1, "max": 5000}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def token_file(instance_path) -> TokenFile:
    return TokenFile(instance_path / "tokens")


@pytest.fixture
def scoped(make_app, token_file):
    """A test client of an app with a tokens file, the space `tickets` created by an admin, and one token of each
    kind: legacy (no scopes), admin, draw:tickets, draw:*, admin plus draw:tickets."""
    tokens = {
        "legacy": token_file.create("legacy"),
        "admin": token_file.create("admin", ("spaces:admin",)),
        "tickets": token_file.create("tickets", ("draw:tickets",)),
        "any": token_file.create("any", ("draw:*",)),
        "both": token_file.create("both", ("spaces:admin", "draw:tickets")),
    }
    client = make_app(TOKENS_FILE="tokens").test_client()
    assert client.put("/v5/spaces/tickets", json=TICKETS, headers=bearer(tokens["admin"])).status_code == 201
    assert client.put("/v5/spaces/other", json=TICKETS, headers=bearer(tokens["admin"])).status_code == 201
    return client, tokens


# Who may do what: (method, path) -> the tokens allowed; every other token gets 403.
ALLOWED = {
    ("PUT", "/v5/spaces/new"): {"admin", "both"},
    ("GET", "/v5/spaces/tickets/random"): {"legacy", "tickets", "any", "both"},
    ("GET", "/v5/spaces/tickets/random?count=3"): {"legacy", "tickets", "any", "both"},
    ("GET", "/v5/spaces/other/random"): {"legacy", "any"},
    ("GET", "/v5/spaces/tickets"): {"legacy", "admin", "tickets", "any", "both"},
    ("GET", "/v5/spaces/other"): {"legacy", "admin", "any", "both"},
    ("GET", "/v5/spaces"): {"legacy", "admin", "any", "both"},
    ("GET", "/v5/random"): {"legacy", "any"},
    ("GET", "/v1/random"): {"legacy", "any"},
    ("GET", "/v5/stats"): {"legacy", "any"},
}
KINDS = ("legacy", "admin", "tickets", "any", "both")


@pytest.mark.parametrize(("method", "path"), ALLOWED, ids=[f"{m} {p}" for m, p in ALLOWED])
def test_each_path_takes_exactly_the_tokens_whose_scopes_allow_it(scoped, method, path):
    client, tokens = scoped
    for kind in KINDS:
        headers = bearer(tokens[kind])
        if method == "PUT":
            response = client.put(path, json=TICKETS, headers=headers)
        else:
            response = client.get(path, headers=headers)
        if kind in ALLOWED[method, path]:
            assert response.status_code in (200, 201), (kind, response.json)
            continue
        assert response.status_code == 403, (kind, response.status_code)
        assert response.is_json and response.json["code"] == "forbidden", kind
        assert "scope" in response.json["error"] and response.json["needed_scopes"], kind
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="uniquerand", error="insufficient_scope"'), challenge


def test_a_refused_draw_or_create_changes_nothing(scoped):
    client, tokens = scoped
    admin = bearer(tokens["admin"])
    assert client.get("/v5/spaces/tickets/random", headers=admin).status_code == 403
    assert client.get("/v5/spaces/tickets", headers=admin).json["issued"] == 0
    assert client.put("/v5/spaces/made", json=TICKETS, headers=bearer(tokens["legacy"])).status_code == 403
    assert client.get("/v5/spaces/made", headers=admin).json["code"] == "space_not_found"


def test_without_a_valid_token_the_space_paths_answer_401(scoped):
    client, _ = scoped
    for path in ("/v5/spaces", "/v5/spaces/tickets", "/v5/spaces/tickets/random"):
        response = client.get(path)
        assert response.status_code == 401 and response.json["code"] == "unauthorized", path
        assert client.get(path, headers=bearer("urt_wrong")).status_code == 401, path
    assert client.put("/v5/spaces/new", json=TICKETS).status_code == 401


def test_without_a_tokens_file_anyone_creates_and_draws(client):
    assert client.put("/v5/spaces/open", json=TICKETS).status_code == 201
    assert client.get("/v5/spaces/open/random").status_code == 200


# The file and the scope rules


def test_a_line_without_scopes_means_draw_everywhere_and_no_admin():
    legacy = TokenEntry("old", b"x" * 32, "2026-01-01T00:00:00Z")
    assert legacy.granted == ("draw:*",)
    assert legacy.allows("draw:anything") and legacy.allows("draw:*") and not legacy.allows("spaces:admin")
    narrow = TokenEntry("narrow", b"y" * 32, "", ("draw:tickets",))
    assert narrow.allows("draw:tickets") and not narrow.allows("draw:other") and not narrow.allows("draw:*")
    admin = TokenEntry("admin", b"z" * 32, "", ("spaces:admin",))
    assert admin.allows("spaces:admin") and not admin.allows("draw:tickets")


def test_scopes_are_read_from_the_fourth_field_and_created_may_be_left_out():
    hashed = digest_of("urt_t").hex()
    entries = parse_entries(
        f"a\t{hashed}\n"
        f"b\t{'1' * 64}\t2026-01-01T00:00:00Z\n"
        f"c\t{'2' * 64}\t2026-01-01T00:00:00Z\tspaces:admin,draw:tickets\n"
        f"d\t{'3' * 64}\tdraw:*\n"
    )
    assert [(e.name, e.created, e.scopes) for e in entries] == [
        ("a", "", ()),
        ("b", "2026-01-01T00:00:00Z", ()),
        ("c", "2026-01-01T00:00:00Z", ("spaces:admin", "draw:tickets")),
        ("d", "", ("draw:*",)),
    ]


@pytest.mark.parametrize("scope", ["draw:", "draw:Tickets", "draw:a b", "admin", "spaces:*", "draw:-x", ""])
def test_a_bad_scope_is_refused_and_nothing_is_written(token_file, scope):
    with pytest.raises(ScopeError, match="is not a scope"):
        token_file.create("ci", (scope,))
    assert not token_file.path.exists()


def test_a_scope_in_the_file_that_is_not_one_fails_closed(token_file):
    token_file.path.parent.mkdir(parents=True, exist_ok=True)
    token_file.path.write_text(f"ci\t{'a' * 64}\t2026-01-01T00:00:00Z\tdraw:*,root\n")
    with pytest.raises(TokenFileError, match="line 1"):
        token_file.verify("urt_any")


# flask tokens


@pytest.fixture
def tokens_runner(make_app):
    return make_app(TOKENS_FILE="tokens").test_cli_runner()


def test_cli_creates_a_scoped_token_and_lists_its_scopes(tokens_runner, token_file):
    args = ["tokens", "create", "ops", "--scope", "spaces:admin", "--scope", "draw:tickets", "--scope", "draw:tickets"]
    result = tokens_runner.invoke(args=args)
    assert result.exit_code == 0, result.output
    assert token_file.identify(result.stdout.strip()).scopes == ("spaces:admin", "draw:tickets")
    assert tokens_runner.invoke(args=["tokens", "create", "plain"]).exit_code == 0
    listing = tokens_runner.invoke(args=["tokens", "list"]).stdout.splitlines()
    assert [line.split("\t")[::2] for line in listing] == [["ops", "spaces:admin,draw:tickets"], ["plain", "draw:*"]]


def test_cli_refuses_a_bad_scope_naming_the_option(tokens_runner, token_file):
    result = tokens_runner.invoke(args=["tokens", "create", "ops", "--scope", "spaces:root"])
    assert result.exit_code == 2 and "--scope" in result.output and "spaces:root" in result.output
    assert not token_file.path.exists()


# A real gunicorn, and tokens made by the real command


def test_scoped_tokens_made_by_flask_tokens_work_on_a_real_server(make_server, instance_path):
    env = {**os.environ, "UNIQUERAND_INSTANCE_PATH": str(instance_path), "UNIQUERAND_TOKENS_FILE": "tokens"}

    def create(name: str, *scopes: str) -> str:
        command = [sys.executable, "-m", "flask", "--app", "wsgi", "tokens", "create", name]
        command += [argument for scope in scopes for argument in ("--scope", scope)]
        return subprocess.run(command, env=env, check=True, capture_output=True, text=True, timeout=60).stdout.strip()

    admin, drawer = create("admin", "spaces:admin"), create("drawer", "draw:prizes")
    server = make_server(workers=2, env={"UNIQUERAND_TOKENS_FILE": "tokens"})
    status, body = put_json(server.port, "/v5/spaces/prizes", TICKETS, headers=bearer(drawer))
    assert (status, body["code"], body["needed_scopes"]) == (403, "forbidden", ["spaces:admin"])
    assert put_json(server.port, "/v5/spaces/prizes", TICKETS, headers=bearer(admin))[0] == 201
    status, body, _ = get(server.port, "/v5/spaces/prizes/random?count=5", headers=bearer(drawer))
    assert status == 200 and len(set(body["numbers"])) == 5
    status, body, headers = get(server.port, "/v5/spaces/prizes/random", headers=bearer(admin))
    assert (status, body["code"]) == (403, "forbidden") and "insufficient_scope" in headers["www-authenticate"]
    assert get(server.port, "/v5/spaces/prizes", headers=bearer(admin))[1]["issued"] == 5


@pytest.mark.parametrize("name", ["a%0Ab", "a%0D%0AX-Evil:%201", "a%22b", "%C3%A9", "UPPER", "a%20b"])
def test_a_name_no_space_can_have_is_refused_as_json_and_never_reaches_the_challenge(scoped, name):
    client, tokens = scoped
    for kind in KINDS:
        for path in (f"/v5/spaces/{name}/random", f"/v5/spaces/{name}"):
            response = client.get(path, headers=bearer(tokens[kind]))
            assert response.status_code in (403, 404) and response.is_json, (kind, path, response.status_code)
            challenge = response.headers.get("WWW-Authenticate", "")
            assert "draw:*" in challenge or not challenge, challenge
            assert "X-Evil" not in response.headers
