"""No page the service serves reaches for another host: /docs and /redoc work on a LAN box offline.

Generic over the app: every GET route without path parameters, every file of a mounted static
folder, and whatever their HTML and CSS link to. HTML and CSS are scanned for absolute URLs
(attributes, inline scripts and styles, `url(...)`, `@import`). The JavaScript bundles carry
documentation links in strings that are never fetched, so what they load is judged in headless
Chromium, which may resolve no host but 127.0.0.1: every request a page makes must go to the
server (or be stopped by the browser itself, as the docs' Content-Security-Policy stops ReDoc's
logo from cdn.redoc.ly), and the page must render.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from browser_helpers import require_browser, start_chromium
from fastapi.routing import iter_route_contexts
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from app.main import create_app
from app.settings import Settings

ABSOLUTE_URL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.-]+(?::\d+)?[^\s"'<>)]*""")
CSS_REFERENCE = re.compile(r"""url\(\s*['"]?([^'")\s]+)|@import\s+['"]([^'"]+)""")
# What each documentation page shows once its script ran (a blank page has none of it).
RENDERED = {"/docs": ".swagger-ui .info .title", "/redoc": ".api-content h1"}


class LinkCollector(HTMLParser):
    """Every URL-valued attribute, and the text of inline scripts and styles."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.inline: list[str] = []
        self._in_code = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and name in ("src", "href", "action", "srcset", "poster", "data"):
                self.links.append(value)
            elif value and name == "style":
                self.inline.append(value)
        self._in_code = tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self._in_code = False

    def handle_data(self, data: str) -> None:
        if self._in_code:
            self.inline.append(data)


def served_paths(settings: Settings) -> list[str]:
    """GET routes without path parameters, and every file of every mounted static folder."""
    paths = []
    for route in iter_route_contexts(create_app(settings).routes):  # included routers too
        if "GET" in (route.methods or ()) and "{" not in route.path:
            paths.append(route.path)
        mounted = route.original_route
        if isinstance(mounted, Mount) and isinstance(mounted.app, StaticFiles):
            folder = Path(mounted.app.directory or "")
            paths += [f"{route.path}/{file.relative_to(folder)}" for file in folder.rglob("*")]
    return sorted(set(paths))


def foreign(url: str, base_url: str) -> bool:
    """An absolute URL on another host than the server's (data: and relative URLs are local)."""
    parts = urlsplit(urljoin(base_url + "/", url))
    return parts.scheme in ("http", "https", "ws", "wss", "") and parts.netloc not in (
        urlsplit(base_url).netloc,
        "",
    )


def crawl(base_url: str, paths: list[str]) -> Iterator[tuple[str, str, str]]:
    """(path, content type, text) of every served page and of each local file it links to."""
    queue, seen = list(paths), set()
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        response = httpx.get(base_url + path, timeout=30)
        kind = response.headers.get("content-type", "").split(";")[0]
        if kind not in ("text/html", "text/css"):
            continue
        yield path, kind, response.text
        for link in links_of(kind, response.text):
            target = urljoin(base_url + path, link)
            if not foreign(target, base_url) and target.startswith(base_url):
                queue.append(urlsplit(target).path)


def links_of(kind: str, text: str) -> list[str]:
    if kind == "text/css":
        return [a or b for a, b in CSS_REFERENCE.findall(text)]
    collector = LinkCollector()
    collector.feed(text)
    return collector.links


def test_html_and_css_reference_no_other_host(tiny_server: str) -> None:
    paths = served_paths(Settings())
    assert {"/docs", "/redoc"} <= set(paths)
    scanned = 0
    for path, kind, text in crawl(tiny_server, paths):
        scanned += 1
        if kind == "text/css":
            references = links_of(kind, text)
        else:
            collector = LinkCollector()
            collector.feed(text)
            references = collector.links + [
                url for code in collector.inline for url in ABSOLUTE_URL.findall(code)
            ]
        outside = [url for url in references if foreign(url, tiny_server)]
        assert not outside, f"{path} references other hosts: {outside}"
    assert scanned >= 3  # /docs, /redoc and the Swagger UI stylesheet at least


@pytest.fixture(scope="module")
def offline_browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium that can resolve no host but 127.0.0.1, logging every request."""
    driver = start_chromium(
        *require_browser(),
        extra_arguments=["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"],
        capabilities={"goog:loggingPrefs": {"performance": "ALL"}},
    )
    try:
        yield driver
    finally:
        driver.quit()


def requested_urls(driver: webdriver.Chrome) -> list[str]:
    """URLs the page asked for that the browser did not block itself (a request the page's
    Content-Security-Policy stopped never reached the network)."""
    urls, blocked = {}, set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message["params"]
        if message["method"] == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed" and params.get("blockedReason"):
            blocked.add(params["requestId"])
    return [url for request_id, url in urls.items() if request_id not in blocked]


def test_pages_load_nothing_from_another_host_and_render(
    tiny_server: str, offline_browser: webdriver.Chrome
) -> None:
    pages = [path for path, kind, _ in crawl(tiny_server, served_paths(Settings()))]
    pages = [path for path in pages if not path.endswith(".css")]
    assert {"/docs", "/redoc"} <= set(pages)
    for path in pages:
        offline_browser.get_log("performance")  # drop what came before
        offline_browser.get(tiny_server + path)
        if path in RENDERED:
            WebDriverWait(offline_browser, 30).until(
                lambda driver, path=path: driver.find_elements(By.CSS_SELECTOR, RENDERED[path])
            )
        urls = requested_urls(offline_browser)
        assert urls, f"{path}: no request seen"
        outside = [url for url in urls if foreign(url, tiny_server) and not url.startswith("data:")]
        assert not outside, f"{path} requested other hosts: {outside}"
