"""Rate limits and the per-client active cap through real HTTP on tiny weights."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from http_helpers import (
    FAST,
    assert_envelope,
    image_bytes,
    multipart,
    post_parts,
    post_try_on,
    serve,
    tiny_settings,
    try_on_parts,
    wait_until_ready,
)

KEYS = {name: f"{name}-0123456789abcdef" for name in ("alice", "bob", "carol", "dave", "erin")}
NOT_MULTIPART = {"Content-Type": "text/plain"}  # 422 at once: counted, but no GPU time


@pytest.fixture(scope="module")
def limited_server(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    keys_file = tmp_path_factory.mktemp("limits") / "keys.txt"
    keys_file.write_text("".join(f"{name} {key}\n" for name, key in KEYS.items()))
    settings = tiny_settings(
        tiny_weights,
        api_keys_file=keys_file,
        rate_limit="3/minute;100/day",
        max_active_per_client=1,
    )
    with serve(settings) as base_url:
        assert wait_until_ready(base_url)["status"] == "ok"
        yield base_url


def key(name: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[name]}


def remaining(response: httpx.Response) -> list[int]:
    return [int(value) for value in re.findall(r";r=(\d+)", response.headers["RateLimit"])]


def test_a_client_over_its_limit_while_another_keeps_getting_200(limited_server: str) -> None:
    url = f"{limited_server}/api/try-on"
    policy = '"3/minute";q=3;w=60, "100/day";q=100;w=86400'
    for expected in ([2, 99], [1, 98], [0, 97]):
        response = httpx.post(url, content=b"x", headers={**key("alice"), **NOT_MULTIPART})
        assert response.status_code == 422
        assert response.headers["RateLimit-Policy"] == policy
        assert remaining(response) == expected
    refused = httpx.post(url, content=b"x", headers={**key("alice"), **NOT_MULTIPART})
    assert_envelope(refused, 429, "rate_limited", "3/minute")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert remaining(refused) == [0, 97]  # the items after the refusing one are not counted
    for expected in ([2, 99], [1, 98]):
        served = post_try_on(limited_server, try_on_parts(**FAST), headers=key("bob"))
        assert served.status_code == 200, served.text
        assert served.headers["RateLimit-Policy"] == policy
        assert remaining(served) == expected
        still = httpx.post(url, content=b"x", headers={**key("alice"), **NOT_MULTIPART})
        assert still.status_code == 429
    # Polling and other routes are not counted (the health check never is).
    assert "RateLimit" not in httpx.get(f"{limited_server}/health").headers
    assert "RateLimit" not in httpx.get(f"{limited_server}/docs", headers=key("alice")).headers


def test_image_uploads_have_the_same_limit_on_their_own_counter(limited_server: str) -> None:
    """Storing a photo decodes and fits it, so uploads are limited like try-ons, but counted
    apart: a client that stored its photos still has every try-on of its budget."""
    url = f"{limited_server}/api/try-on/images"
    photo = [("image", image_bytes(), "p.jpg", "image/jpeg")]
    for expected in ([2, 99], [1, 98], [0, 97]):
        stored = post_parts(url, photo, headers=key("erin"))
        assert stored.status_code == 201, stored.text
        assert remaining(stored) == expected
    refused = post_parts(url, photo, headers=key("erin"))
    assert_envelope(refused, 429, "rate_limited", "image uploads")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    try_on = httpx.post(
        f"{limited_server}/api/try-on", content=b"x", headers={**key("erin"), **NOT_MULTIPART}
    )
    assert try_on.status_code == 422 and remaining(try_on) == [2, 99]
    read = httpx.get(f"{url}/{stored.json()['imageId']}", headers=key("erin"))
    assert read.status_code == 200 and "RateLimit" not in read.headers


def test_active_work_per_client_is_capped(limited_server: str) -> None:
    """Carol's first request holds her one active slot while its upload is still arriving: her
    second gets 429 too_many_active_requests, Bob is served meanwhile, then Carol's first ends."""
    body, content_type = multipart(try_on_parts(**FAST))
    first_admitted, release = threading.Event(), threading.Event()
    outcome: dict[str, httpx.Response] = {}

    def slow_body() -> Iterator[bytes]:
        first_admitted.set()
        yield body[:1000]
        assert release.wait(60)
        yield body[1000:]

    def carol_uploads() -> None:
        outcome["first"] = httpx.post(
            f"{limited_server}/api/try-on",
            content=slow_body(),
            headers={"Content-Type": content_type, **key("carol")},
            timeout=120,
        )

    uploader = threading.Thread(target=carol_uploads)
    uploader.start()
    try:
        assert first_admitted.wait(10)
        deadline = time.monotonic() + 10
        while httpx.get(f"{limited_server}/health").json()["receiving"] < 1:  # slot is held
            assert time.monotonic() < deadline
            time.sleep(0.05)
        refused = httpx.post(f"{limited_server}/api/try-on", content=b"x", headers=key("carol"))
        assert_envelope(refused, 429, "too_many_active_requests", "at most 1")
        assert refused.headers["Retry-After"] == "5"
        assert "RateLimit" in refused.headers
        other = httpx.post(f"{limited_server}/api/try-on", content=b"x", headers=key("dave"))
        assert other.status_code == 422  # another client is not affected
    finally:
        release.set()
        uploader.join(120)
    assert outcome["first"].status_code == 200, outcome["first"].text
    after = httpx.post(f"{limited_server}/api/try-on", content=b"x", headers=key("carol"))
    assert after.status_code == 422  # the slot was given back


@pytest.fixture(scope="module")
def open_limited_server(tiny_weights: Path) -> Iterator[str]:
    """No keys: clients are IPs; the test client on 127.0.0.1 is the trusted proxy by default."""
    with serve(tiny_settings(tiny_weights, rate_limit="1/minute")) as base_url:
        yield base_url


def is_limited(base_url: str, forwarded_for: bytes | None) -> bool:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {}
    response = httpx.post(f"{base_url}/api/try-on", content=b"x", headers=headers)
    assert response.status_code in (422, 429, 503), response.text  # 503: models still loading
    return response.status_code == 429


# In order, on one server with 1/minute per client: (X-Forwarded-For, refused as a repeat?).
FORWARDED_FOR_SEQUENCE = [
    (b"198.51.100.1", False),
    (b"198.51.100.1", True),
    (b"198.51.100.2", False),
    (b"spoofed-1, 10.0.0.1, 198.51.100.2", True),  # the proxy appended the real one: rightmost
    (b"10.0.0.1, 198.51.100.3:8080", False),  # a port is not part of the client
    (b"198.51.100.3", True),
    (b"garbage", False),  # not an address: one shared "unknown" client, no fresh identities
    (b"<script>alert(1)</script>", True),
    (b"\xff\xfe" * 100, True),
    (b"x" * 4000, True),
    (b"2001:db8:7:7::1", False),
    (b"2001:db8:7:7:ffff::2", True),  # the same /64
    (b"2001:db8:7:8::1", False),
    (b",,,,", False),  # nothing usable: the socket's address, 127.0.0.1
    (None, True),
]


def test_forwarded_for_chains_with_garbage(open_limited_server: str) -> None:
    for forwarded_for, limited in FORWARDED_FOR_SEQUENCE:
        assert is_limited(open_limited_server, forwarded_for) is limited, forwarded_for
    assert httpx.get(f"{open_limited_server}/health").status_code in (200, 503)


def test_forwarded_for_is_ignored_without_a_trusted_proxy(tiny_weights: Path) -> None:
    settings = tiny_settings(tiny_weights, rate_limit="1/minute", forwarded_allow_ips="")
    with serve(settings) as base_url:
        assert not is_limited(base_url, b"198.51.100.77")
        assert is_limited(base_url, b"198.51.100.78")  # both are 127.0.0.1
