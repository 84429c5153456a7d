"""Access control: every request needs an API key except on the few routes listed open here.

Deny by default: a route added later (jobs, the page's API calls, anything) needs a key without
anyone remembering to say so; only `is_open` lets a request through without one. The check runs
as pure ASGI middleware on the request head, so a refused upload is never read: the 401 goes out
before the first body byte is received (BaseHTTPMiddleware would also buffer streaming answers).
"""

from __future__ import annotations

import ipaddress
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from app.access.keys import MAX_KEY_CHARS, VALID_KEY, KeyStore
from app.edge.context import request_context
from app.edge.envelope import send_error
from app.edge.errors import UnauthorizedError

logger = logging.getLogger(__name__)

# Open without a key (README, "Access control and limits"): monitors, the page and its files,
# CORS preflights.
OPEN_PATHS = frozenset({"/health", "/"})
OPEN_PREFIXES = ("/static/",)
READ_METHODS = frozenset({"GET", "HEAD"})
METRICS_PATH = "/metrics"
HOW_TO_SEND = "send 'Authorization: Bearer KEY' (or 'X-API-Key: KEY')"


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"; False for anything else, names included."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def is_open(scope: Scope, metrics_public: bool) -> bool:
    """Whether this request may go through without a key."""
    method, path = scope["method"], scope["path"]
    if method == "OPTIONS":  # preflights carry no credentials by design (CORS answers them)
        return True
    if method not in READ_METHODS:
        return False
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return True
    if path == METRICS_PATH:
        client = scope.get("client")
        return metrics_public or is_loopback(client[0] if client else None)
    return False


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The one key a request carries, or UnauthorizedError saying what is wrong with it.

    Judged on raw header bytes: a 10 KB value or non-ASCII bytes are refused by length and
    character class, never decoded or hashed.
    """
    keys = []
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() != b"bearer":
                raise UnauthorizedError(
                    f"Authorization must use the Bearer scheme: {HOW_TO_SEND}.", key_sent=True
                )
            keys.append(token.strip())
        elif name == b"x-api-key":
            keys.append(value.strip())
    if not keys:
        raise UnauthorizedError(f"An API key is required: {HOW_TO_SEND}.", key_sent=False)
    if len(keys) > 1:
        raise UnauthorizedError(
            f"Send one API key in one header (this request has {len(keys)}).", key_sent=True
        )
    key = keys[0]
    if len(key) > MAX_KEY_CHARS:
        raise UnauthorizedError(
            f"The API key is too long: keys have at most {MAX_KEY_CHARS} characters.",
            key_sent=True,
        )
    if not VALID_KEY.match(key):
        raise UnauthorizedError(
            "The API key is malformed: one key of visible ASCII characters, without spaces or "
            "commas.",
            key_sent=True,
        )
    return key


class AccessMiddleware:
    """Names the client (the request context's `client`) from its key, or answers 401."""

    def __init__(self, app: ASGIApp, keys: KeyStore, metrics_public: bool = False) -> None:
        self.app = app
        self.keys = keys
        self.metrics_public = metrics_public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Only HTTP is served: the app has no websocket routes, and lifespan carries no request.
        if scope["type"] != "http" or is_open(scope, self.metrics_public):
            await self.app(scope, receive, send)
            return
        try:
            client = self.authenticate(scope["headers"])
        except UnauthorizedError as error:
            logger.info("unauthorized: %s", error.message)
            await send_error(scope, receive, send, error)
            return
        request_context(scope).client = client
        await self.app(scope, receive, send)

    def authenticate(self, headers: list[tuple[bytes, bytes]]) -> str:
        key = presented_key(headers)
        ring = self.keys.ring  # one version of the file for this request
        client = ring.client_for(key)
        if client is not None:
            return client
        if (meant := ring.name_for_newline_variant(key)) is not None:
            logger.warning(
                "the stored hash of client %r is of its key PLUS A NEWLINE (made with `echo`); "
                "hash it again with `printf %%s KEY | sha256sum`",
                meant,
            )
        raise UnauthorizedError(
            "This API key is not valid (it may have been rotated): ask the operator for a "
            "current one.",
            key_sent=True,
        )


def warn_if_open(host: str, keys_configured: bool) -> None:
    """The one start-up line saying that anyone who can reach the port can use the GPU."""
    if not keys_configured and not is_loopback(host):
        logger.warning(
            "no --api-keys-file: anyone who can reach %s can use the GPU (set keys and limits, "
            "see README 'Access control')",
            host,
        )
