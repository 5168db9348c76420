"""/docs: Swagger UI over /openapi.json, every file it loads served by the app itself, so the page works
offline and asks nothing of the internet."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from uniquerand.blueprints import docs

# A URL that leaves this server: absolute, or scheme-relative as a quoted string or a CSS url().
EXTERNAL_URL = re.compile(r"""https?://|["'(]\s*//""", re.IGNORECASE)
CONTENT_TYPES = {
    ".css": {"text/css"},
    ".js": {"text/javascript", "application/javascript"},
    ".png": {"image/png"},
    ".json": {"application/json"},
}


class References(HTMLParser):
    """Every src= and href= of a page, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def fetch(client, url: str) -> tuple[int, str, bytes]:
    with client.get(url) as response:
        return response.status_code, response.mimetype, response.get_data()


def page_references(client) -> list[str]:
    parser = References()
    parser.feed(fetch(client, "/docs")[2].decode())
    return parser.urls


def test_docs_is_an_html_page_that_loads_swagger_ui_and_its_init_script(client):
    with client.get("/docs") as page:
        assert page.status_code == 200 and page.mimetype == "text/html"
        assert page.headers["Cache-Control"] == "no-store"
        html = page.get_data(as_text=True)
    assert not EXTERNAL_URL.search(html), "the page names another host"
    urls = page_references(client)
    assert {"/docs/swagger-ui/swagger-ui-bundle.js", "/docs/swagger-ui/swagger-ui.css"} <= set(urls)
    assert "/static/docs/swagger-init.js" in urls
    scripts = [url for url in urls if url.endswith(".js")]
    assert scripts[-1] == "/static/docs/swagger-init.js", "the init script runs after the bundle it calls"


def test_every_file_the_page_references_is_served_by_the_app(client):
    for url in page_references(client):
        assert url.startswith("/") and not url.startswith("//"), f"{url} is not served by the app"
        status, mimetype, _ = fetch(client, url)
        assert status == 200, url
        assert mimetype in CONTENT_TYPES[Path(url).suffix], (url, mimetype)


def test_the_init_script_points_swagger_ui_at_this_servers_document_and_no_validator(client):
    status, _, body = fetch(client, "/static/docs/swagger-init.js")
    script = body.decode()
    assert status == 200
    assert not EXTERNAL_URL.search(script), "the init script names another host"
    # Swagger UI's default validatorUrl sends the document to an online validator.
    assert re.search(r"\bvalidatorUrl:\s*null\b", script)
    (document_url,) = re.findall(r"""\burl:\s*["']([^"']+)["']""", script)
    assert document_url == "/openapi.json"
    with client.get(document_url) as response:
        assert response.status_code == 200 and response.mimetype == "application/json"
        assert response.json["openapi"].startswith("3.1")


def test_try_it_out_sends_requests_to_the_server_that_serves_the_page(client):
    # With no `servers`, or only relative ones, Swagger UI sends its requests to the page's origin.
    servers = client.get("/openapi.json").json.get("servers", [])
    assert all(server["url"].startswith("/") for server in servers), servers


def test_the_stylesheets_load_nothing_but_data_urls_and_the_apps_own_files(client):
    stylesheets = [url for url in page_references(client) if url.endswith(".css")]
    assert stylesheets
    for stylesheet in stylesheets:
        css = fetch(client, stylesheet)[2].decode()
        assert "@import" not in css, stylesheet
        for url in re.findall(r"""url\(\s*["']?([^"')]*)""", css):
            if url.startswith("data:"):
                continue
            assert not EXTERNAL_URL.search(f'"{url}'), (stylesheet, url)
            assert fetch(client, f"{stylesheet.rsplit('/', 1)[0]}/{url}")[0] == 200, (stylesheet, url)


def test_the_packaged_swagger_ui_renders_openapi_3_1():
    # Swagger UI renders OpenAPI 3.1 documents from version 5 on; flask-swagger-ui's version is Swagger UI's.
    version = (Path(docs.bp.static_folder) / "VERSION").read_text().strip()
    assert re.fullmatch(r"v5\.\d+\.\d+", version), version


@pytest.mark.parametrize("url", ["/docs/swagger-ui/nope.js", "/docs/swagger-ui/../../wsgi.py", "/docs/nope"])
def test_a_missing_docs_file_is_a_json_404(client, url):
    response = client.get(url)
    assert response.status_code == 404 and response.content_type == "application/json"
    assert response.json["code"] == "not_found"


def test_the_page_files_are_revalidated_not_fetched_again(client):
    with client.get("/docs/swagger-ui/swagger-ui-bundle.js") as first:
        assert "no-store" not in first.headers.get("Cache-Control", "")
        etag = first.headers["ETag"]
    with client.get("/docs/swagger-ui/swagger-ui-bundle.js", headers={"If-None-Match": etag}) as again:
        assert again.status_code == 304
    # The numbers are never cacheable.
    with client.get("/v5/random") as response:
        assert response.headers["Cache-Control"] == "no-store"
