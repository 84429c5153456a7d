"""One way to open Redis for every shared store (short timeouts, reconnect on the next command),
and one answer while it is down."""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.edge.envelope import error_response

logger = logging.getLogger(__name__)

# A Redis that is down must not stall a request (or /health) for long: fail fast, and let the
# connection pool reconnect by itself on the next command once the server is back.
SOCKET_TIMEOUT_S = 2.0
RETRIES = 2


def connect(url: str) -> Redis:
    """A client for `url` (redis://host:port/db); no connection is made until the first command."""
    return Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        # After a Redis restart every pooled connection is dead: each command (and each pub/sub
        # subscription) retries on a fresh one instead of failing once per stale connection.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), RETRIES),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=10,
    )


def describe_failure(exc: Exception) -> str:
    """What /health says about a Redis that did not answer."""
    return f"unreachable: {type(exc).__name__}: {exc}"


async def answer_redis_down(request: Request, exc: Exception) -> JSONResponse:
    """A route that needs Redis while it is down: 503 with the envelope, not a 500 and a trace."""
    logger.warning("Redis unavailable during %s: %s", request.url.path, exc)
    message = "Shared job storage is unavailable for a moment; try again in a few seconds."
    return error_response(request, 503, "storage_unavailable", message, retry_after_s=5)
