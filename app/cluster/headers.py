"""Headers at the ingress's edge: Ray's client-controlled ones dropped, the replica named.

Ray 2.60's proxy lets any client set `x-request-timeout-seconds` (cut its own request short, or
lift the server's timeout) and `x-request-disconnect-disabled` (keep its work running after it hung
up). The proxy reads them before the ingress runs, so the ingress cannot unread them; what it does
is make them mean nothing: the routes watch the client's connection themselves (a queued try-on of
a client that left is dropped either way), a job never depends on its submit connection, and these
headers are removed here so that no code in the app, or any handle call it makes, passes them on.

Every answer names the ingress replica that gave it (`X-Served-By`), for operators reading a trace
and for the tests that prove a job is read and canceled through another replica than its own.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

RAY_CLIENT_HEADERS = frozenset({b"x-request-timeout-seconds", b"x-request-disconnect-disabled"})
SERVED_BY_HEADER = "X-Served-By"


class IngressHeadersMiddleware:
    """Pure ASGI (streams and SSE pass through untouched)."""

    def __init__(self, app: ASGIApp, replica_id: str) -> None:
        self.app = app
        self.replica_id = replica_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            if any(name in RAY_CLIENT_HEADERS for name, _ in headers):
                kept = [(name, value) for name, value in headers if name not in RAY_CLIENT_HEADERS]
                scope = {**scope, "headers": kept}

            async def send_named(message: Message) -> None:
                if message["type"] == "http.response.start":
                    MutableHeaders(scope=message)[SERVED_BY_HEADER] = self.replica_id
                await send(message)

            await self.app(scope, receive, send_named)
            return
        await self.app(scope, receive, send)
