"""The page's files over real HTTP: served from app/static, self-contained, errors in the envelope.

No browser needed (tests/app/test_page_browser.py drives the page itself); the models may still be
loading: the page is served all the same.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from http_helpers import assert_envelope, serve, tiny_settings, wait_until_ready

from app.routes.page import STATIC_DIR

CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


@pytest.fixture(scope="module")
def client(tiny_weights: Path) -> Iterator[httpx.Client]:
    with serve(tiny_settings(tiny_weights)) as base_url, httpx.Client(base_url=base_url) as client:
        yield client
        # A load still running after the server stops raced the next module's own load.
        wait_until_ready(base_url)


def test_page_and_its_files_are_served(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '"/static/app.js"' in page.text and '"/static/style.css"' in page.text
    for path in STATIC_DIR.iterdir():  # app.js imports the other scripts from here
        response = client.get(f"/static/{path.name}")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(CONTENT_TYPES[path.suffix])
        assert response.content == path.read_bytes()


def test_page_fetches_nothing_from_another_host() -> None:
    """Works offline and on a LAN: no absolute URL or protocol-relative reference anywhere."""
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://|(src|href)=\"//|url\(", text), path.name


def test_missing_static_file_gets_the_error_envelope(client: httpx.Client) -> None:
    assert_envelope(client.get("/static/missing.js"), 404, "not_found", "Not Found")


def test_page_stays_out_of_the_api_schema(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(path.startswith("/static") for path in paths)


def test_page_is_open_when_the_api_needs_a_key(tiny_weights: Path, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("someone a-key-for-the-page-test\n")
    settings = tiny_settings(tiny_weights, api_keys_file=keys_file)
    with serve(settings) as base_url, httpx.Client(base_url=base_url) as client:
        for path in ("/", *(f"/static/{file.name}" for file in STATIC_DIR.iterdir())):
            assert client.get(path).status_code == 200, path
        assert_envelope(client.get("/api/try-on/jobs/x"), 401, "unauthorized", "API key")
        wait_until_ready(base_url)
