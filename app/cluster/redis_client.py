"""One way to open Redis for every shared store: short timeouts, reconnect on the next command."""

from __future__ import annotations

from redis.asyncio import Redis

# A Redis that is down must not stall a request (or /health) for long: fail fast, and let the
# connection pool reconnect by itself on the next command once the server is back.
SOCKET_TIMEOUT_S = 2.0


def connect(url: str) -> Redis:
    """A client for `url` (redis://host:port/db); no connection is made until the first command."""
    return Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        health_check_interval=10,
    )


def describe_failure(exc: Exception) -> str:
    """What /health says about a Redis that did not answer."""
    return f"unreachable: {type(exc).__name__}: {exc}"
