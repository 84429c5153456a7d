"""API keys through real HTTP: uvicorn on tiny weights, a keys file on disk, live reloads."""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from http_helpers import (
    FAST,
    assert_envelope,
    multipart,
    serve,
    tiny_settings,
    try_on_parts,
    wait_until_ready,
)

from app.access.keys import RELOAD_POLL_S

ALICE_KEY = "alice-0123456789abcdef"
BOB_KEY = "bob-0123456789abcdefgh"
CAROL_KEY = "carol-0123456789abcdef"
# Hashed with `echo KEY | sha256sum`: the digest of the key plus a newline.
CAROL_ECHO_HASH = hashlib.sha256(CAROL_KEY.encode() + b"\n").hexdigest()
KEYS_TEXT = (
    "# name key\n"
    f"alice {ALICE_KEY}\n"
    f"bob sha256:{hashlib.sha256(BOB_KEY.encode()).hexdigest()}\n"
    f"carol sha256:{CAROL_ECHO_HASH}\n"
)
RELOAD_DEADLINE_S = 3 * RELOAD_POLL_S + 2  # a poll period, the re-read, and a loaded machine


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("access") / "api-keys.txt"
    path.write_text(KEYS_TEXT)
    return path


@pytest.fixture(scope="module")
def keyed_server(tiny_weights: Path, keys_file: Path) -> Iterator[str]:
    with serve(tiny_settings(tiny_weights, api_keys_file=keys_file)) as base_url:
        assert wait_until_ready(base_url)["status"] == "ok"
        yield base_url


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def raw_request(base_url: str, head: bytes, wait_s: float = 10.0) -> bytes:
    """Send a request head (no body) on a raw socket; return what the server answers in time."""
    url = urlsplit(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=wait_s) as connection:
        connection.sendall(head)
        reply = b""
        try:
            while b'"}' not in reply:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except TimeoutError:
            pass
    return reply


def try_on_head(base_url: str, *headers: bytes, content_length: int = 500_000) -> bytes:
    host = urlsplit(base_url).netloc.encode()
    lines = [
        b"POST /api/try-on HTTP/1.1",
        b"Host: " + host,
        b"Content-Type: multipart/form-data; boundary=x",
        b"Content-Length: " + str(content_length).encode(),
        *headers,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def test_bearer_and_x_api_key_both_work(keyed_server: str) -> None:
    body, content_type = multipart(try_on_parts(**FAST))
    for headers in (bearer(ALICE_KEY), {"X-API-Key": BOB_KEY}):
        response = httpx.post(
            f"{keyed_server}/api/try-on",
            content=body,
            headers={"Content-Type": content_type, **headers},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        assert response.json()["success"] is True


def test_open_routes_need_no_key(keyed_server: str) -> None:
    assert httpx.get(f"{keyed_server}/health").status_code == 200
    preflight = httpx.options(
        f"{keyed_server}/api/try-on",
        headers={
            "Origin": "http://localhost:8081",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, x-api-key",
        },
    )
    assert preflight.status_code == 200
    # Named, not "*": a wildcard does not cover Authorization in browsers.
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
    for path in ("/", "/static/app.js"):  # the page asks for a key itself
        assert httpx.get(f"{keyed_server}{path}").status_code == 200, path
    metrics = httpx.get(f"{keyed_server}/metrics")  # a loopback client: open
    assert metrics.status_code == 200
    assert "catvton_http_requests_total" in metrics.text


def test_everything_else_needs_a_key_by_default(keyed_server: str) -> None:
    for method, path in [
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("GET", "/api/try-on/jobs/some-id"),
        ("POST", "/api/try-on/jobs"),
        ("DELETE", "/api/try-on"),
        ("GET", "/no-such-route"),
    ]:
        response = httpx.request(method, f"{keyed_server}{path}")
        assert_envelope(response, 401, "unauthorized", "An API key is required")
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert httpx.get(f"{keyed_server}/docs", headers=bearer(ALICE_KEY)).status_code == 200


def test_a_browser_can_read_the_401(keyed_server: str) -> None:
    """CORS wraps access control, so the page (another origin) sees the 401 and its headers."""
    response = httpx.post(f"{keyed_server}/api/try-on", headers={"Origin": "http://localhost:8081"})
    assert response.status_code == 401
    assert response.headers["Access-Control-Allow-Origin"] in ("*", "http://localhost:8081")
    assert "www-authenticate" in response.headers["Access-Control-Expose-Headers"].lower()


def test_metrics_through_a_proxy_is_not_loopback(keyed_server: str) -> None:
    """The test client is 127.0.0.1, a trusted proxy by default: X-Forwarded-For names the
    client, so /metrics for a remote client needs a key even though the socket is loopback."""
    remote = {"X-Forwarded-For": "203.0.113.9"}
    response = httpx.get(f"{keyed_server}/metrics", headers=remote)
    assert_envelope(response, 401, "unauthorized", "API key")
    keyed = httpx.get(f"{keyed_server}/metrics", headers={**remote, **bearer(BOB_KEY)})
    assert keyed.status_code == 200


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ([], "An API key is required"),
        ([b"Authorization: Bearer not-a-key-of-ours-0123"], "not valid"),
        ([b"X-API-Key: not-a-key-of-ours-0123"], "not valid"),
        ([b"Authorization: Basic YWxpY2U6c2VjcmV0"], "Bearer scheme"),
        (
            [b"Authorization: Bearer " + ALICE_KEY.encode(), b"X-API-Key: " + BOB_KEY.encode()],
            "one API key in one header (this request has 2)",
        ),
        (
            [b"X-API-Key: " + ALICE_KEY.encode(), b"X-API-Key: " + ALICE_KEY.encode()],
            "this request has 2",
        ),
        ([b"Authorization: Bearer " + ALICE_KEY.encode() + b", " + BOB_KEY.encode()], "malformed"),
        ([b"Authorization: Bearer " + ALICE_KEY.encode() + b" " + BOB_KEY.encode()], "malformed"),
        ([b"Authorization: Bearer " + b"k" * 10_000], "too long"),
        ([b"X-API-Key: alice-0123456789abc\xe9\xff"], "malformed"),
        ([b"Authorization: Bearer " + CAROL_KEY.encode()], "not valid"),
    ],
    ids=[
        "missing",
        "unknown-bearer",
        "unknown-x-api-key",
        "basic-scheme",
        "bearer-and-x-api-key",
        "two-x-api-key-headers",
        "two-keys-comma",
        "two-keys-space",
        "10kb-header",
        "non-ascii-bytes",
        "hash-made-with-echo",
    ],
)
def test_bad_credentials_get_401_before_the_upload_is_read(
    keyed_server: str, headers: list[bytes], says: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A raw request that announces 500 KB and sends NO body byte: the 401 still arrives, so the
    server decided on the head alone (a server waiting for the body would time out here)."""
    with caplog.at_level(logging.INFO):
        reply = raw_request(keyed_server, try_on_head(keyed_server, *headers))
    assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
    assert b"www-authenticate: Bearer" in reply
    assert b'"error":"unauthorized"' in reply
    assert says.encode() in reply
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for key in (ALICE_KEY, BOB_KEY, CAROL_KEY, "not-a-key-of-ours"):
        assert key not in logged and key.encode() not in reply  # names, never keys


def test_a_valid_key_makes_the_server_wait_for_the_body(keyed_server: str) -> None:
    """The control for the test above: with a good key the same head gets no answer yet."""
    head = try_on_head(keyed_server, b"X-API-Key: " + ALICE_KEY.encode())
    assert raw_request(keyed_server, head, wait_s=1.5) == b""


def test_a_hash_made_with_echo_is_explained_in_the_log(
    keyed_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.access.guard"):
        response = httpx.get(f"{keyed_server}/docs", headers=bearer(CAROL_KEY))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert any("'carol'" in r.getMessage() and "printf" in r.getMessage() for r in caplog.records)


def wait_for_status(url: str, headers: dict[str, str], status: int) -> float:
    """Poll until `url` answers `status`; return the seconds it took."""
    started = time.monotonic()
    while (response := httpx.get(url, headers=headers)).status_code != status:
        assert time.monotonic() - started < RELOAD_DEADLINE_S, response.text
        time.sleep(0.1)
    return time.monotonic() - started


def test_a_removed_key_stops_working_while_its_running_request_finishes(
    keyed_server: str, keys_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Alice's upload is under way (authenticated, body half sent) when her line leaves the file:
    her next request gets 401 within the reload delay, the running one still gets its 200."""
    body, content_type = multipart(try_on_parts(**FAST))
    key_removed = threading.Event()
    outcome: dict[str, httpx.Response] = {}

    def slow_body() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        assert key_removed.wait(30)
        yield body[len(body) // 2 :]

    def alice_uploads() -> None:
        outcome["response"] = httpx.post(
            f"{keyed_server}/api/try-on",
            content=slow_body(),
            headers={"Content-Type": content_type, **bearer(ALICE_KEY)},
            timeout=120,
        )

    uploader = threading.Thread(target=alice_uploads)
    uploader.start()
    probe = f"{keyed_server}/docs"
    try:
        time.sleep(0.5)  # the request head is in
        keys_file.write_text(KEYS_TEXT.replace(f"alice {ALICE_KEY}\n", ""))
        with caplog.at_level(logging.INFO, logger="app.access.keys"):
            took = wait_for_status(probe, bearer(ALICE_KEY), 401)
        assert took <= RELOAD_DEADLINE_S
        assert any("removed: alice" in r.getMessage() for r in caplog.records)
        assert httpx.get(probe, headers=bearer(BOB_KEY)).status_code == 200
    finally:
        key_removed.set()
        uploader.join(120)
        keys_file.write_text(KEYS_TEXT)
    assert outcome["response"].status_code == 200, outcome["response"].text
    wait_for_status(probe, bearer(ALICE_KEY), 200)


def test_a_malformed_reload_keeps_the_old_keys_and_logs_the_line(
    keyed_server: str, keys_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    probe = f"{keyed_server}/docs"
    with caplog.at_level(logging.ERROR, logger="app.access.keys"):
        keys_file.write_text(KEYS_TEXT + f"dave {ALICE_KEY[:8]}\n")  # line 5: a short key
        deadline = time.monotonic() + RELOAD_DEADLINE_S
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.1)
    try:
        [record] = caplog.records
        message = record.getMessage()
        assert "NOT reloaded" in message and "line 5" in message
        assert ALICE_KEY[:8] not in message
        assert httpx.get(probe, headers=bearer(ALICE_KEY)).status_code == 200
        # An empty file too (an editor truncating before it writes) keeps the old keys.
        keys_file.write_text("")
        time.sleep(RELOAD_DEADLINE_S)
        assert httpx.get(probe, headers=bearer(BOB_KEY)).status_code == 200
    finally:
        keys_file.write_text(KEYS_TEXT)
