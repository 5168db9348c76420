"""The API document: valid OpenAPI 3.1, complete (every route, every stage, every error shape), and true
(real responses conform, Schemathesis finds nothing against a live gunicorn). Its page: test_docs_page.py."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import filelock
import jsonschema_rs
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from tests.support import REPO, STAGE_NAMES
from uniquerand.stages import Sources
from uniquerand.tokens import TokenFile


def conforms(document: dict, component: str, body: object) -> bool:
    """Whether `body` matches `#/components/schemas/<component>` of the document."""
    schema = {"$ref": f"#/components/schemas/{component}", "components": document["components"]}
    return jsonschema_rs.Draft202012Validator(schema).is_valid(body)


def response_schema(document: dict, path: str, status: str) -> dict:
    """The JSON Schema of a GET response, resolvable on its own."""
    response = document["paths"][path]["get"]["responses"][status]
    if "$ref" in response:
        response = document["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return {**response["content"]["application/json"]["schema"], "components": document["components"]}


@pytest.fixture
def document(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.content_type == "application/json"
    return response.json


def test_document_is_valid_openapi_3_1(document):
    assert document["openapi"] == "3.1.0"
    OPENAPI_31_VALIDATOR.validate(document)


def test_openapi_spec_validator_finds_nothing(document):
    """Beyond the 3.1 schema: every $ref resolves, operationIds are unique, schemas are valid JSON Schema."""
    validate(document, cls=OpenAPIV31SpecValidator)
    duplicated = copy.deepcopy(document)
    duplicated["paths"]["/v2/random"]["get"]["operationId"] = "v1_random"
    with pytest.raises(OpenAPIValidationError, match="not unique"):
        validate(duplicated, cls=OpenAPIV31SpecValidator)


def test_every_route_and_its_methods_are_documented(app, document):
    routes = {
        re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule): rule.methods - {"HEAD"}
        for rule in app.url_map.iter_rules()
        if rule.endpoint not in ("static", "docs.static")  # files: the page's own and Swagger UI's
    }
    documented = {path: {method.upper() for method in item} for path, item in document["paths"].items()}
    assert documented == routes
    for stage in STAGE_NAMES:
        assert {f"/{stage}/random", f"/{stage}/stats"} <= documented.keys()


def test_v1_type_is_lenient_and_takes_no_count(document):
    operation = document["paths"]["/v1/random"]["get"]
    assert [parameter["name"] for parameter in operation["parameters"]] == ["type"]
    assert operation["parameters"][0]["schema"] == {"type": "string"}
    assert "422" not in operation["responses"]


@pytest.mark.parametrize("stage", [stage for stage in STAGE_NAMES if stage != "v1"])
def test_validating_stages_document_type_count_and_422(make_app, stage):
    document = make_app(MAX_COUNT=7).test_client().get("/openapi.json").json
    operation = document["paths"][f"/{stage}/random"]["get"]
    parameters = {parameter["name"]: parameter["schema"] for parameter in operation["parameters"]}
    assert parameters["count"] == {"type": "integer", "minimum": 1, "maximum": 7}
    pattern = re.compile(parameters["type"]["pattern"])
    assert [bool(pattern.search(value)) for value in ("int", "FLOAT", "Int", "decimal", "", "int ")] == [
        True, True, True, False, False, False,
    ]  # fmt: skip
    # /v5 records answers for retries with an Idempotency-Key: 409 while one with the key is in progress.
    keyed = {"409"} if stage == "v5" else set()
    assert set(operation["responses"]) == {"200", "422", "500", "503"} | keyed
    assert ("Idempotency-Key" in {p["name"] for p in operation["parameters"]}) == (stage == "v5")
    ok = jsonschema_rs.Draft202012Validator(response_schema(document, f"/{stage}/random", "200"))
    assert ok.is_valid({"number": 5}) and ok.is_valid({"number": 5.25}) and ok.is_valid({"numbers": [1, 2.5]})
    assert not ok.is_valid({"numbers": list(range(8))}) and not ok.is_valid({"numbers": []})
    assert not ok.is_valid({"number": 5, "numbers": [5]}) and not ok.is_valid({"number": "5"})


def test_a_stage_registered_later_is_documented_from_its_fields(app):
    from uniquerand.openapi import build_document

    stages = app.extensions["uniquerand"]["stages"]
    later = replace(
        stages[-1], name="v9", description="A later stage.", sources=Sources("shard", "shards", {"type": "string"})
    )
    app.extensions["uniquerand"]["stages"] = (*stages, later)
    document = build_document(app)
    assert {"/v9/random", "/v9/stats"} <= document["paths"].keys()
    assert {"name": "v9", "description": "A later stage."} in document["tags"]
    ok = jsonschema_rs.Draft202012Validator(response_schema(document, "/v9/random", "200"))
    assert ok.is_valid({"number": 1, "shard": "int_shard_1.db"})
    assert ok.is_valid({"numbers": [1, 2], "shards": ["int_shard_1.db", "int_shard_0.db"]})
    assert not ok.is_valid({"numbers": [1, 2], "shard": "int_shard_1.db"})
    assert not ok.is_valid({"number": 1, "shard": 1})


def test_every_store_error_code_is_documented(document):
    from uniquerand.errors import STORE_ERROR_RESPONSES

    schemas = document["components"]["schemas"]
    for status, code, _ in STORE_ERROR_RESPONSES.values():
        schema = {503: "Unavailable", 404: "SpaceNotFound", 409: "SpaceConflict"}.get(status, "ServerError")
        if code == "draw_not_found":
            schema = "DrawNotFound"
        assert code in schemas[schema]["properties"]["code"]["enum"]


def test_routing_errors_conform(client, document):
    response = client.get("/v9/random")
    assert response.status_code == 404 and conforms(document, "NotFound", response.json)
    response = client.delete("/v2/random")
    assert response.status_code == 405 and conforms(document, "MethodNotAllowed", response.json)
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


@pytest.mark.parametrize(
    "query", ["type=decimal", "type=int&type=float", "count=0", "count=1001", "count=%C2%B2", "count=1&count=1"]
)
@pytest.mark.parametrize("stage", ["v2", "v3", "v5"])
def test_invalid_parameters_conform(client, document, stage, query):
    response = client.get(f"/{stage}/random?{query}")
    assert response.status_code == 422
    assert jsonschema_rs.Draft202012Validator(response_schema(document, f"/{stage}/random", "422")).is_valid(
        response.json
    )


def test_exhaustion_and_insufficient_remaining_conform(make_app):
    client = make_app(INT_MIN=1, INT_MAX=2).test_client()
    document = client.get("/openapi.json").json
    response = client.get("/v3/random?count=3")
    assert response.status_code == 503 and "Retry-After" not in response.headers
    assert response.json["code"] == "insufficient_remaining" and conforms(document, "Unavailable", response.json)
    assert client.get("/v3/random?count=2").status_code == 200
    response = client.get("/v3/random")
    assert response.status_code == 503 and "Retry-After" not in response.headers
    assert response.json["code"] == "space_exhausted" and conforms(document, "Unavailable", response.json)


def test_busy_store_conforms_with_retry_after(make_app, instance_path):
    client = make_app(LOCK_TIMEOUT=0.2).test_client()
    document = client.get("/openapi.json").json
    (instance_path / "v2").mkdir(parents=True)
    with filelock.FileLock(instance_path / "v2" / "used_numbers.json.lock"):
        response = client.get("/v2/random")
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.json["code"] == "store_busy" and conforms(document, "Unavailable", response.json)


def test_server_errors_conform(make_app, instance_path):
    app = make_app()

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret detail")

    client = app.test_client()
    document = client.get("/openapi.json").json
    (instance_path / "v1").mkdir(parents=True)
    (instance_path / "v1" / "used_numbers.json").write_text("{not json")
    response = client.get("/v1/random")
    assert response.status_code == 500 and response.json["code"] == "store_corrupt"
    assert conforms(document, "ServerError", response.json)
    response = client.get("/boom")
    assert response.status_code == 500 and "secret" not in response.get_data(as_text=True)
    assert conforms(document, "ServerError", response.json)


def test_schemathesis_finds_nothing_against_live_gunicorn(make_server, filled_shards):
    filled_shards()
    """Every phase (examples, coverage incl. undocumented methods, fuzzing), every check, deterministic."""
    server = make_server(workers=2, threads=4)
    statuses = run(server.port, max_examples=30, extra=["--exclude-path-regex", "^/v5/spaces"])
    assert statuses.keys() <= {200, 405, 422}, statuses
    assert statuses[422] > 0 and statuses[405] > 0, statuses


def test_schemathesis_on_named_spaces_finds_only_documented_answers(make_server):
    """The spaces' paths apart: a definition valid by its schema may still be refused (min above max is 422,
    a name taken by another range 409), and a space made of one number ends at once (a documented 503)."""
    server = make_server(workers=2, threads=4)
    extra = ["--include-path-regex", "^/v5/spaces", "--exclude-checks", "positive_data_acceptance,not_a_server_error"]
    statuses = run(server.port, max_examples=30, extra=extra)
    assert statuses.keys() <= {200, 201, 404, 405, 409, 413, 422, 503}, statuses
    assert statuses[422] > 0 and statuses[404] > 0, statuses


def test_schemathesis_on_an_exhausted_space_finds_only_documented_503s(make_server):
    server = make_server(
        {"UNIQUERAND_INT_MIN": "1", "UNIQUERAND_INT_MAX": "2", "UNIQUERAND_FLOAT_MAX": "0.000002"},
        workers=1, threads=2,
    )  # fmt: skip
    for path in ("/v1/random", "/v1/random?type=float", "/v3/random?count=2", "/v3/random?type=float&count=2"):
        assert server.get(path)[0] == 200
    # A documented 503 is still a 5xx to the `not_a_server_error` check; conformance checks stay on.
    extra = ["--include-path-regex", "^/v[0-9]+/random$", "--exclude-checks", "not_a_server_error"]
    statuses = run(server.port, max_examples=5, extra=extra)
    assert 503 in statuses and 500 not in statuses, statuses


@pytest.mark.parametrize("metrics_require_token", [False, True])
def test_with_tokens_the_protected_operations_declare_the_bearer_scheme(make_app, metrics_require_token):
    document = make_app(TOKENS_FILE="tokens", METRICS_REQUIRE_TOKEN=metrics_require_token).test_client()
    document = document.get("/openapi.json").json
    OPENAPI_31_VALIDATOR.validate(document)
    validate(document, cls=OpenAPIV31SpecValidator)
    assert document["components"]["securitySchemes"]["bearerAuth"] | {"description": ""} == {
        "type": "http", "scheme": "bearer", "description": "",
    }  # fmt: skip
    secured = {path for path, item in document["paths"].items() if "security" in item["get"]}
    protected = {f"/{stage}/{end}" for stage in STAGE_NAMES for end in ("random", "stats")}
    protected |= {"/v5/spaces", "/v5/spaces/{name}", "/v5/spaces/{name}/random", "/v5/spaces/{name}/draws/{serial}"}
    assert secured == protected | ({"/metrics"} if metrics_require_token else set())
    for path in secured:
        operation = document["paths"][path]["get"]
        assert operation["security"] == [{"bearerAuth": []}]
        assert operation["responses"]["401"] == {"$ref": "#/components/responses/Unauthorized"}
        assert "security" not in document["paths"][path]["options"], "OPTIONS touches no store and stays open"
    assert "security" not in document, "/, /healthz, /readyz, /docs and /openapi.json stay open"
    assert "tokens_unavailable" in document["components"]["schemas"]["Unavailable"]["properties"]["code"]["enum"]


def test_without_tokens_the_document_has_no_security(document):
    assert "securitySchemes" not in document["components"] and "Unauthorized" not in document["components"]["schemas"]


def test_refusals_conform(make_app, instance_path):
    token = TokenFile(instance_path / "tokens").create("ci")
    client = make_app(TOKENS_FILE="tokens").test_client()
    document = client.get("/openapi.json").json
    challenge = re.compile(document["components"]["headers"]["WWW-Authenticate"]["schema"]["pattern"])
    for headers in ({}, {"Authorization": f"Bearer {token}x"}):
        response = client.get("/v3/random", headers=headers)
        assert response.status_code == 401 and conforms(document, "Unauthorized", response.json)
        assert challenge.fullmatch(response.headers["WWW-Authenticate"])
    (instance_path / "tokens").unlink()
    response = client.get("/v3/stats", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 503 and conforms(document, "Unavailable", response.json)
    response = client.get("/readyz")
    assert response.status_code == 503 and conforms(document, "NotReady", response.json)


def test_schemathesis_with_the_bearer_scheme_finds_nothing(make_server, filled_shards, instance_path):
    """A real token through the document's own scheme (Schemathesis's `auth.openapi`): the protected operations
    answer 200 with it, and its `ignored_auth` check finds that they refuse requests without it or with a wrong
    one."""
    filled_shards()
    token = TokenFile(instance_path / "tokens").create("schemathesis")
    env = {"UNIQUERAND_TOKENS_FILE": "tokens", "UNIQUERAND_METRICS_REQUIRE_TOKEN": "true"}
    server = make_server(env, workers=2, threads=4)
    config = f'[auth.openapi.bearerAuth]\nbearer = "{token}"\n'
    # Unsanitized: the report keeps each request's Authorization header (a throwaway token's) to check below.
    entries = run_entries(
        server.port,
        max_examples=30,
        extra=["--output-sanitize", "false", "--exclude-path-regex", "^/v5/spaces"],
        config=config,
    )
    statuses = Counter(entry["response"]["status"] for entry in entries)
    assert statuses.keys() <= {200, 401, 405, 422}, statuses
    assert statuses[422] > 0 and statuses[405] > 0, statuses
    protected = re.compile(r"/(v[0-9]+/(random|stats)|metrics)$")
    answered: Counter[tuple[bool, int]] = Counter()
    for entry in entries:
        request, path = entry["request"], urlsplit(entry["request"]["url"]).path
        if request["method"] == "GET" and protected.search(path):
            sent = {header["value"] for header in request["headers"] if header["name"].lower() == "authorization"}
            answered[sent == {f"Bearer {token}"}, entry["response"]["status"]] += 1
    # Every protected GET answered 200 carried the token; those without it (Schemathesis's `ignored_auth`
    # check sends some) were refused.
    assert answered[True, 200] > 0 and answered[False, 401] > 0 and not answered[False, 200], answered
    assert token not in server.log()


# Every run's: Schemathesis sends one generated Idempotency-Key with several requests, and /v5's draws answer a
# valid request with the documented 422 `idempotency_key_reused` when the key named another request first.
KEY_REUSE = """
[[operations]]
include-path = "/v5/random"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429", "5xx"]
"""


def run(port: int, max_examples: int, extra: list[str] | None = None, config: str | None = None) -> Counter[int]:
    """Schemathesis's own CLI (it runs every phase, which its Python API leaves to the caller); the statuses
    of every response it got, from its HAR report."""
    return Counter(entry["response"]["status"] for entry in run_entries(port, max_examples, extra, config))


def run_entries(port: int, max_examples: int, extra: list[str] | None = None, config: str | None = None) -> list:
    """The same run's HAR entries (every request and its response); `config`: schemathesis.toml for it, plus
    KEY_REUSE."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "schemathesis.toml").write_text((config or "") + KEY_REUSE)
        har = Path(folder) / "run.har"
        command = [
            sys.executable, "-m", "schemathesis.cli", "run", f"http://127.0.0.1:{port}/openapi.json",
            "--checks", "all", "--max-examples", str(max_examples), "--generation-deterministic",
            "--workers", "1", "--request-timeout", "10", "--no-color",
            "--report", "har", "--report-har-path", str(har), *(extra or []),
        ]  # fmt: skip
        # A throwaway working folder: the CLI keeps a cache folder (.schemathesis/) in it.
        result = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        return json.loads(har.read_text())["log"]["entries"]


def _codes(node) -> set[str]:
    """Every error code a schema of the document allows (`code`'s enum, anywhere in it)."""
    if isinstance(node, dict):
        found = set(node["code"].get("enum", [])) if isinstance(node.get("code"), dict) else set()
        return found.union(*(_codes(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_codes(value) for value in node))
    return set()


def test_the_readme_s_error_table_lists_every_code_the_api_document_allows_and_no_other(make_app):
    # The document is built from the code's own lists; with a tokens file it has every code there is.
    document = make_app(TOKENS_FILE="tokens", METRICS_REQUIRE_TOKEN=True).test_client().get("/openapi.json").get_json()
    allowed = _codes(document)
    assert {"not_found", "unauthorized", "tokens_unavailable", "not_ready", "idempotency_key_reused"} <= allowed
    readme = (REPO / "README.md").read_text()
    table = readme.split("### Errors", 1)[1].split("\n\n", 2)[2].split("\n\n", 1)[0]
    listed = {code for row in table.splitlines()[2:] for code in re.findall(r"`([a-z_]+)`", row.split("|")[2])}
    assert allowed - listed == set(), "codes the API can answer that the README's table lacks"
    # Refused before the app sees the request (gunicorn's limits, answered as JSON by the worker): not operations
    # of the document; tests/test_hostile_input.py sends each.
    refused_by_gunicorn = {"bad_request", "uri_too_long", "request_header_fields_too_large"}
    assert listed - allowed == refused_by_gunicorn, "codes in the README's table that the API does not know"
