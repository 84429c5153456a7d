"""The keys file, route rules, client identity and slot hand-over, without a server (*_http.py)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import pytest
from starlette.requests import HTTPConnection
from starlette.types import Message, Receive, Scope, Send

from app.access.guard import is_open, warn_if_open
from app.access.keys import KeysFileError, parse_keys_file, read_keys_file
from app.access.limits import (
    InMemoryActiveWork,
    LimitsMiddleware,
    parse_rate_limit,
    take_active_slot,
)
from app.edge.clients import UNKNOWN_CLIENT, client_ip

ALICE_KEY = "alice-0123456789abcdef"
BOB_KEY = "bob-0123456789abcdefgh"


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def test_plain_and_hashed_keys_with_comments_crlf_and_a_bom() -> None:
    text = (
        "\ufeff# clients of the try-on service\r\n"
        f"alice {ALICE_KEY}   # the Expo app\r\n"
        "\r\n"
        f"  bob sha256:{sha256_hex(BOB_KEY).upper()}\r\n"
    )
    ring = parse_keys_file(text, "keys.txt")
    assert ring.names == {"alice", "bob"}
    assert ring.client_for(ALICE_KEY.encode()) == "alice"
    assert ring.client_for(BOB_KEY.encode()) == "bob"
    assert ring.client_for(b"alice-0123456789abcdeX") is None
    assert ring.client_for(ALICE_KEY.encode() + b"\n") is None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "no keys"),
        ("# only a comment\n\n", "no keys"),
        (f"alice {ALICE_KEY}\nbob\n", "line 2: expected 'NAME KEY'"),
        (f"alice {ALICE_KEY} extra\n", "line 1: expected 'NAME KEY'"),
        (
            f"alice {ALICE_KEY}\nalice {BOB_KEY}\n",
            "line 2: the name 'alice' is already used on line 1",
        ),
        (f"alice {ALICE_KEY}\nbob {ALICE_KEY}\n", "line 2: the same key as 'alice'"),
        (f"alice {ALICE_KEY}\nbob sha256:{sha256_hex(ALICE_KEY)}\n", "the same key as 'alice'"),
        ("alice short\n", "line 1: a key has 16..256 characters"),
        ("alice sha256:abc\n", "line 1: 'sha256:' must be followed by 64 hex digits"),
        ("al ice-is-not-a-name 0123456789abcdef\n", "line 1: expected"),
        (f"{'n' * 65} {ALICE_KEY}\n", "line 1: a name is 1-64"),
        ("alice clé-0123456789abcdef\n", "line 1: a key is visible ASCII"),
    ],
    ids=[
        "empty",
        "comments-only",
        "one-field",
        "three-fields",
        "duplicate-name",
        "duplicate-key",
        "duplicate-key-hashed",
        "short-key",
        "bad-hash",
        "space-in-name",
        "long-name",
        "non-ascii-key",
    ],
)
def test_bad_files_are_refused_naming_the_line_never_the_key(text: str, says: str) -> None:
    with pytest.raises(KeysFileError) as refused:
        parse_keys_file(text, "keys.txt")
    message = str(refused.value)
    assert says in message
    assert message.startswith("keys.txt")
    for key in (ALICE_KEY, BOB_KEY, "short", "clé"):
        assert key not in message


def test_a_file_that_is_not_utf8_or_missing(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_bytes(f"alice {ALICE_KEY}\nbob \xff\xfe0123456789abcdef\n".encode("latin-1"))
    with pytest.raises(KeysFileError, match="line 2: not UTF-8"):
        read_keys_file(path)
    with pytest.raises(KeysFileError, match="cannot be read"):
        read_keys_file(tmp_path / "absent.txt")


def scope(method: str, path: str, client: str = "203.0.113.9") -> dict:
    return {"type": "http", "method": method, "path": path, "client": (client, 1234)}


@pytest.mark.parametrize(
    ("method", "path", "client", "metrics_public", "open_"),
    [
        ("GET", "/health", "203.0.113.9", False, True),
        ("HEAD", "/health", "203.0.113.9", False, True),
        ("GET", "/", "203.0.113.9", False, True),
        ("GET", "/static/app.js", "203.0.113.9", False, True),
        ("OPTIONS", "/api/try-on", "203.0.113.9", False, True),
        ("GET", "/metrics", "127.0.0.1", False, True),
        ("GET", "/metrics", "::1", False, True),
        ("GET", "/metrics", "203.0.113.9", False, False),
        ("GET", "/metrics", "203.0.113.9", True, True),
        ("POST", "/health", "127.0.0.1", False, False),
        ("POST", "/api/try-on", "127.0.0.1", False, False),
        ("GET", "/api/try-on/jobs/abc", "127.0.0.1", False, False),
        ("GET", "/docs", "127.0.0.1", False, False),
        ("GET", "/a-route-added-later", "127.0.0.1", False, False),
        ("GET", "/staticfile", "127.0.0.1", False, False),
    ],
)
def test_routes_need_a_key_unless_listed_open(
    method: str, path: str, client: str, metrics_public: bool, open_: bool
) -> None:
    assert is_open(scope(method, path, client), metrics_public) is open_


def test_the_start_up_warning_when_open_on_a_non_loopback_host(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.access.guard"):
        warn_if_open("127.0.0.1", keys_configured=False)
        warn_if_open("localhost", keys_configured=False)
        warn_if_open("0.0.0.0", keys_configured=True)
        assert not caplog.records
        warn_if_open("0.0.0.0", keys_configured=False)
    [record] = caplog.records
    assert "anyone who can reach 0.0.0.0 can use the GPU" in record.getMessage()


@pytest.mark.parametrize(
    ("host", "client"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("::1", "::1"),
        ("garbage", UNKNOWN_CLIENT),
        ("<script>", UNKNOWN_CLIENT),
        ("1.2.3.4:80", UNKNOWN_CLIENT),
        ("", UNKNOWN_CLIENT),
        (None, UNKNOWN_CLIENT),
    ],
)
def test_client_ip_is_canonical_and_ipv6_counts_per_64(host: str | None, client: str) -> None:
    assert client_ip(host) == client


@pytest.mark.parametrize("text", ["ten/minute", "30/fortnight", "30 minute", "", "0/minute"])
def test_a_rate_limit_the_library_refuses_names_the_flag(text: str) -> None:
    with pytest.raises(ValueError, match="--rate-limit"):
        parse_rate_limit(text)


def test_rate_limit_notation() -> None:
    assert [str(item) for item in parse_rate_limit("30/minute;500/day")] == [
        "30 per 1 minute",
        "500 per 1 day",
    ]


async def answer(send: Send, status: int) -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


@pytest.mark.parametrize(("status", "held"), [(202, 1), (503, 0)])
def test_a_slot_taken_by_a_job_is_kept_only_if_the_submit_succeeds(status: int, held: int) -> None:
    """A submit that takes the slot and then fails (queue full) created no job: not a leak."""
    active = InMemoryActiveWork(max_per_client=1)

    async def submit_route(scope: Scope, receive: Receive, send: Send) -> None:
        assert take_active_slot(HTTPConnection(scope)) is not None
        await answer(send, status)

    async def sent(message: Message) -> None:
        pass

    async def request() -> None:
        scope = {"type": "http", "method": "POST", "path": "/api/try-on/jobs", "headers": []}
        scope["client"] = ("198.51.100.1", 1)
        await LimitsMiddleware(submit_route, None, active)(scope, None, sent)  # type: ignore[arg-type]

    asyncio.run(request())
    assert active.counts["198.51.100.1"] == held
